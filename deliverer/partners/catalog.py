"""The event-type catalog: the names endpoints may subscribe to, with what each means and
the JSON Schema of its payload (``GET /api/partner/v2/event-types``).

Operators configure it with ``DELIVERER_EVENT_TYPES_FILE``, a JSON list of
``{"name", "description", "schema"}``; without one, the seeds' event types ship. Publishing
does not check types against it: producers keep publishing what they publish, and an
endpoint subscribed to ``*`` receives it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from deliverer.config import Settings
from deliverer.errors import ValidationFailed


@dataclass(frozen=True)
class EventType:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=dict)


def _object(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "required": required, "properties": properties}


_ID = {"type": "string"}
_AMOUNT = {"type": ["number", "string"]}

DEFAULT_CATALOG = (
    EventType("transaction.paid", "A transaction was paid (seed 001).",
              _object(["transaction_id"], transaction_id=_ID, amount=_AMOUNT,
                      currency={"type": "string"})),
    EventType("transaction.failed", "A transaction failed or was declined.",
              _object(["transaction_id"], transaction_id=_ID, reason={"type": "string"})),
    EventType("payment.status.updated", "A payment's status changed (seed 002).",
              _object(["transaction_id", "status"], transaction_id=_ID,
                      status={"type": "string"})),
    EventType("invoice.settled", "An invoice was settled (seed 004).",
              _object(["invoice_id"], invoice_id={"type": ["integer", "string"]},
                      amount=_AMOUNT)),
    EventType("invoice.expired", "An invoice expired unpaid.",
              _object(["invoice_id"], invoice_id={"type": ["integer", "string"]})),
    EventType("webhook.test", "A test event, sent on request to check an endpoint.",
              _object([], message={"type": "string"})),
)


@functools.cache
def _load(path: str | None) -> tuple[EventType, ...]:
    if path is None:
        return DEFAULT_CATALOG
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    return tuple(EventType(e["name"], e.get("description", ""), e.get("schema") or {})
                 for e in entries)


def event_types(settings: Settings) -> tuple[EventType, ...]:
    return _load(settings.event_types_file)


ALL_AND_SOME = ('eventTypes: "*" takes every event and cannot be listed with other types: '
                'send ["*"] alone, or only the types')


def check_subscriptions(settings: Settings, patterns: list[str]) -> list[str]:
    """``patterns`` if each is ``*``, a catalog name, or a prefix wildcard
    (``transaction.*``) matching at least one name; ValidationFailed listing the valid
    names otherwise."""
    names = [t.name for t in event_types(settings)]
    if not patterns:
        raise ValidationFailed("eventTypes must not be empty: use [\"*\"] for every event")
    if "*" in patterns and len(set(patterns)) > 1:
        # As the portal refuses All events beside some types: which was meant?
        raise ValidationFailed(ALL_AND_SOME)
    unknown = []
    for pattern in patterns:
        if pattern == "*" or pattern in names:
            continue
        if pattern.endswith(".*") and any(n.startswith(pattern[:-1]) for n in names):
            continue
        unknown.append(pattern)
    if unknown:
        raise ValidationFailed(
            f"Unknown event types: {', '.join(unknown)}. Valid: {', '.join(names)}, a prefix "
            "such as transaction.*, or *")
    return list(dict.fromkeys(patterns))
