"""What a publish returns for each event."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Delivery:
    """One notification of an event: one per endpoint it fanned out to."""

    notification_id: str
    status: str
    sequence: int | None
    endpoint_id: str | None  # the endpoint's public id


@dataclass(frozen=True)
class Published:
    """An event and its first notification (the default endpoint's, when it has one),
    which every route that predates fan-out reports; ``deliveries`` holds them all."""

    event_id: str
    notification_id: str
    status: str
    sequence: int | None
    deliveries: tuple[Delivery, ...] = ()
