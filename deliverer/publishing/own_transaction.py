"""How producers publish: each publish in a transaction of its own, and which database
errors it is run again after, so that a retried publish never records an event twice.

What a publish writes is ``service.record_events``'s (on PostgreSQL, for one event,
``one_statement.publish_alone``'s); whether a second run may follow one whose commit is
not known is the idempotency keys' question (``idempotency.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from deliverer.config import Settings
from deliverer.db import in_transaction, is_transient_abort
from deliverer.publishing.one_statement import publish_alone
from deliverer.publishing.published import Published
from deliverer.publishing.service import record_events

# How long a publish in a transaction of its own is run again after a transient database
# error (a deadlock against a worker recording an attempt, which holds the endpoint row
# the sequence number comes from; a connection lost in a database restart). One window
# for every producer: the internal HTTP API and the Python API alike.
PUBLISH_RETRY_FOR = 2.0


def publish(settings: Settings, *, partner_id: str, events: Sequence[Mapping[str, Any]],
            retry_for: float = PUBLISH_RETRY_FOR) -> list[Published]:
    """``record_events`` in a transaction of its own: how every producer publishes
    (``POST /internal/v1/events``, ``deliverer.publish_event(s)``, the broker task).

    A transient database error is run again for up to ``retry_for`` seconds
    (``in_transaction``). Which ones depends on whether a second run can tell that the
    first committed: when every event carries an idempotency key, any of them, even one
    that may have followed the commit (the keys find the events recorded); otherwise only
    an abort that certainly rolled everything back (``is_transient_abort``). A publish
    with keys that lost a race for one (IntegrityError on INSERT: nothing committed) runs
    once more, and finds the winner's event; a single publish's statement waits for the
    partner's publish lock, and its INSERT does nothing on a key committed meanwhile.

    One event on PostgreSQL is one statement committed as it ends (``publish_alone``),
    under the same rules; what it leaves to ``record_events`` is published here.
    """
    keys = [spec.get("idempotency_key") is not None for spec in events]
    only_if = None if keys and all(keys) else is_transient_abort

    def run() -> list[Published]:
        if len(events) == 1:
            published = publish_alone(settings, partner_id, events[0], retry_for=retry_for,
                                      only_if=only_if)
            if published is not None:
                return [published]
        return in_transaction(
            lambda session: record_events(session, settings, partner_id=partner_id,
                                           events=events),
            retry_for=retry_for, only_if=only_if)

    try:
        return run()
    except IntegrityError:
        if not any(keys):
            raise
        return run()


def publish_one(settings: Settings, *, partner_id: str, type: str, reference: str,
                payload: dict[str, Any], callback_url: str | None = None,
                idempotency_key: str | None = None,
                retry_for: float = PUBLISH_RETRY_FOR) -> Published:
    """``publish`` of one event."""
    event = {"type": type, "reference": reference, "payload": payload,
             "callback_url": callback_url, "idempotency_key": idempotency_key}
    return publish(settings, partner_id=partner_id, events=[event], retry_for=retry_for)[0]
