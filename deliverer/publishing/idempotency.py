"""Idempotent publishing: a publish repeated under the producer's idempotency key (its
Idempotency-Key header, or the Celery task id of ``deliverer.publish_event``) finds the
event the first one recorded instead of recording a second one."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from deliverer.errors import Conflict, ValidationFailed
from deliverer.models import Endpoint, Event, Notification
from deliverer.publishing.published import Delivery, Published


class IdempotencyKeyReused(Conflict):
    message = "This idempotency key was already used for a different event"


# The events a partner already recorded under any of a publish's keys: one statement,
# however many events the publish carries.
_KEYED = (
    select(Event.idempotency_key, Event.type, Event.reference, Event.payload,
           Event.callback_url, Event.id, Notification.id, Notification.status,
           Notification.sequence, Endpoint.public_id)
    .join(Notification, Notification.event_id == Event.id)
    .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
    .where(Event.partner_id == bindparam("partner_id"),
           Event.idempotency_key.in_(bindparam("keys", expanding=True)))
    # The order publishing wrote them in: the default endpoint's first.
    .order_by(Endpoint.is_default.desc(), Notification.endpoint_id)
)


def recorded_events(session: Session, partner_id: str,
              events: Sequence[Mapping[str, Any]]) -> dict[str, Published]:
    """The events already recorded under the idempotency keys of ``events``, by key.

    A key used twice in one publish is refused: the two events are either the same one
    (the producer's mistake) or two under one key, and neither can be recorded as asked.
    A key recorded for an event that differs from this publish's is ``IdempotencyKeyReused``.
    """
    keys = [spec["idempotency_key"] for spec in events
            if spec.get("idempotency_key") is not None]
    if not keys:
        return {}
    if len(set(keys)) != len(keys):
        repeated = sorted(key for key, n in Counter(keys).items() if n > 1)
        raise ValidationFailed(
            f"Idempotency keys must differ within one publish; repeated: {repeated[:5]}")
    rows: dict[str, Any] = {}
    deliveries: dict[str, list[Delivery]] = {}
    for found in session.connection().execute(_KEYED, {"partner_id": partner_id,
                                                       "keys": keys}):
        rows.setdefault(found[0], found)
        deliveries.setdefault(found[0], []).append(
            Delivery(found[6], found[7], found[8], found[9]))
    recorded: dict[str, Published] = {}
    for spec in events:
        key = spec.get("idempotency_key")
        row = rows.get(key) if key is not None else None
        if row is None:
            continue
        if (row[1], row[2], _canonical(row[3]), row[4]) != (
                spec["type"], spec["reference"], _canonical(spec["payload"]),
                spec.get("callback_url") or None):
            raise IdempotencyKeyReused()
        recorded[row[0]] = Published(row[5], row[6], row[7], row[8],
                                     tuple(deliveries[row[0]]))
    return recorded


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))
