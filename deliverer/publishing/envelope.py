"""The envelope merchants receive: the event as one canonical JSON body, signed and
sent as it is on every attempt."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String

from deliverer.errors import ValidationFailed
from deliverer.models import Event
from deliverer.models.base import new_id


@dataclass(frozen=True)
class NewEvent:
    """An event about to be written: what its row and its body need. Not an ORM object,
    whose instrumented construction was a tenth of a publish's CPU."""

    id: str
    partner_id: str
    type: str
    reference: str
    payload: Any
    callback_url: str | None
    created_at: datetime


def event_body(event: Event | NewEvent) -> str:
    envelope = {
        "id": event.id,
        "type": event.type,
        "reference": event.reference,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": event.payload,
    }
    # allow_nan=False: NaN and Infinity are not JSON; a body carrying them would be
    # signed and sent, and refused by every strict parser.
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True, allow_nan=False)


# The API's schema checks these at the edge; Python and Celery producers and the CLI are
# checked here, with the same limits (the columns'): a longer value was a DataError.
_TEXT_LIMITS: dict[str, int] = {name: cast(String, Event.__table__.c[name].type).length or 0
                                 for name in ("type", "reference")}


def _check_text(spec: Mapping[str, Any]) -> None:
    for name, limit in _TEXT_LIMITS.items():
        value = spec[name]
        if not isinstance(value, str) or not 1 <= len(value) <= limit:
            raise ValidationFailed(f"{name}: must be a string of 1 to {limit} characters")


def new_event(partner_id: str, spec: Mapping[str, Any], now: datetime
              ) -> tuple[NewEvent, str]:
    """The event a spec describes, and its body; ValidationFailed if its type or
    reference is empty or too long, or its payload is not JSON. The API's schema refuses
    such events at the edge; Python and Celery producers (deliverer.publish_event, the
    publish task) and the CLI come through here."""
    _check_text(spec)
    event = NewEvent(id=new_id(), partner_id=partner_id, type=spec["type"],
                     reference=spec["reference"], payload=spec["payload"],
                     callback_url=spec.get("callback_url"), created_at=now)
    try:
        return event, event_body(event)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"The payload is not JSON: {exc}") from exc
