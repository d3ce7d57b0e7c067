"""What a publish returns for each event."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    event_id: str
    notification_id: str
    status: str
    sequence: int | None
