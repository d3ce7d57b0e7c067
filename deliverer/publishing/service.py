"""Publishing an event: the event row, its notification and its sequence number in one
transaction; the delivery message is sent only after that commit.

A publish may carry the producer's idempotency key (its Idempotency-Key header, or the
Celery task id of ``deliverer.publish_event``): publishing again with the same key,
because the first call's outcome was not known (an error that may have followed its
commit, a redelivered task), returns the event the first call recorded instead of
recording a second one, whose webhook would reach the merchant under another webhook-id.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deliverer.broker.dispatch import enqueue_batch
from deliverer.config import Settings
from deliverer.db import in_transaction, is_transient_abort, on_commit
from deliverer.delivery import netguard
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.errors import Conflict, PartnerNotFound, ValidationFailed
from deliverer.models import (
    Endpoint,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    WebhookSettings,
    not_receiving_webhooks,
    table_of,
    utcnow,
)
from deliverer.models.base import new_id


@dataclass(frozen=True)
class Published:
    event_id: str
    notification_id: str
    status: str
    sequence: int | None


class IdempotencyKeyReused(Conflict):
    message = "This idempotency key was already used for a different event"


def event_body(event: Event) -> str:
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


def _new_event(partner_id: str, spec: Mapping[str, Any], now: datetime) -> tuple[Event, str]:
    """The event a spec describes, and its body; ValidationFailed if its payload is not
    JSON. The API's guard refuses such payloads at the edge; Python and Celery producers
    (deliverer.publish_event, the publish task) and the CLI come through here."""
    event = Event(id=new_id(), partner_id=partner_id, type=spec["type"],
                  reference=spec["reference"], payload=spec["payload"],
                  callback_url=spec.get("callback_url"), created_at=now)
    try:
        return event, event_body(event)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"The payload is not JSON: {exc}") from exc


# Publishing's statements are built once, with bind parameters: building them per call
# cost more CPU than executing them (SQLAlchemy's compiled cache spares only the
# compilation). They run on the session's connection: they are Core statements, and the
# ORM's execute path adds its own cost for nothing.
_EVENTS = table_of(Event)
_NOTIFICATIONS = table_of(Notification)
_ENDPOINTS = table_of(Endpoint)
_PARTNER = (
    select(Partner.active, Partner.flow, WebhookSettings.enabled, WebhookSettings.url)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == Partner.id)
    .where(Partner.id == bindparam("partner_id"))
)
# The events a partner already recorded under any of a publish's keys: one statement,
# however many events the publish carries.
_KEYED = (
    select(Event.idempotency_key, Event.type, Event.reference, Event.payload,
           Event.callback_url, Event.id, Notification.id, Notification.status,
           Notification.sequence)
    .join(Notification, Notification.event_id == Event.id)
    .where(Event.partner_id == bindparam("partner_id"),
           Event.idempotency_key.in_(bindparam("keys", expanding=True)))
)


@functools.cache
def _upsert(dialect: str) -> Any:
    """One statement creates the endpoint row on first use and moves its counter on."""
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert_(_ENDPOINTS)
        .values(partner_id=bindparam("s_partner_id"), url=bindparam("s_url"),
                last_sequence=bindparam("s_count"), created_at=bindparam("s_now"),
                consecutive_failures=0)
        .on_conflict_do_update(
            index_elements=["partner_id", "url"],
            set_={"last_sequence": _ENDPOINTS.c.last_sequence + bindparam("s_count")})
        .returning(_ENDPOINTS.c.id, _ENDPOINTS.c.last_sequence, _ENDPOINTS.c.disabled_at,
                   _ENDPOINTS.c.disabled_reason)
    )


def reserve_sequences(session: Session, partner_id: str, url: str, now: datetime,
                      count: int = 1) -> tuple[int, int, str | None]:
    """(endpoint id, first of ``count`` consecutive sequence numbers, the reason the
    endpoint is disabled or None), creating the endpoint on first use.

    The increment is part of the caller's transaction: a rolled-back publish gives its
    numbers back, so numbers per endpoint have no gaps.
    """
    row = session.connection().execute(_upsert(session.get_bind().dialect.name), {
        "s_partner_id": partner_id, "s_url": url, "s_count": count, "s_now": now,
    }).one()
    disabled = (row[3] or "Endpoint disabled") if row[2] is not None else None
    return int(row[0]), int(row[1]) - count + 1, disabled


def next_sequence(session: Session, partner_id: str, url: str, now: datetime) -> tuple[int, int]:
    """(endpoint id, sequence number) for one new notification to ``url``."""
    endpoint_id, sequence, _disabled = reserve_sequences(session, partner_id, url, now)
    return endpoint_id, sequence


def publish_event(
    session: Session,
    settings: Settings,
    *,
    partner_id: str,
    type: str,
    reference: str,
    payload: dict[str, Any],
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> Published:
    """Publish one event: the one-event case of ``publish_events``, keys included."""
    event = {"type": type, "reference": reference, "payload": payload,
             "callback_url": callback_url, "idempotency_key": idempotency_key}
    return publish_events(session, settings, partner_id=partner_id, events=[event], now=now)[0]


def _recorded(session: Session, partner_id: str,
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
    rows = {row[0]: row for row in session.connection().execute(
        _KEYED, {"partner_id": partner_id, "keys": keys})}
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
        recorded[row[0]] = Published(row[5], row[6], row[7], row[8])
    return recorded


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


# How long a publish in a transaction of its own is run again after a transient database
# error (a deadlock against a worker recording an attempt, which holds the endpoint row
# the sequence number comes from; a connection lost in a database restart). One window
# for every producer: the internal HTTP API and the Python API alike.
PUBLISH_RETRY_FOR = 2.0


def publish_and_commit(settings: Settings, *, partner_id: str,
                       events: Sequence[Mapping[str, Any]],
                       retry_for: float = PUBLISH_RETRY_FOR) -> list[Published]:
    """``publish_events`` in a transaction of its own: how every producer publishes
    (``POST /internal/v1/events``, ``deliverer.publish_event(s)``, the broker task).

    A transient database error is run again for up to ``retry_for`` seconds
    (``in_transaction``). Which ones depends on whether a second run can tell that the
    first committed: when every event carries an idempotency key, any of them, even one
    that may have followed the commit (the keys find the events recorded); otherwise only
    an abort that certainly rolled everything back (``is_transient_abort``). A publish
    with keys that lost a race for one (IntegrityError on INSERT: nothing committed) runs
    once more, and finds the winner's event.
    """
    keys = [spec.get("idempotency_key") is not None for spec in events]
    only_if = None if keys and all(keys) else is_transient_abort

    def run() -> list[Published]:
        return in_transaction(
            lambda session: publish_events(session, settings, partner_id=partner_id,
                                           events=events),
            retry_for=retry_for, only_if=only_if)

    try:
        return run()
    except IntegrityError:
        if not any(keys):
            raise
        return run()


def publish_one_and_commit(settings: Settings, *, partner_id: str, type: str,
                           reference: str, payload: dict[str, Any],
                           callback_url: str | None = None,
                           idempotency_key: str | None = None,
                           retry_for: float = PUBLISH_RETRY_FOR) -> Published:
    """``publish_and_commit`` of one event."""
    event = {"type": type, "reference": reference, "payload": payload,
             "callback_url": callback_url, "idempotency_key": idempotency_key}
    return publish_and_commit(settings, partner_id=partner_id, events=[event],
                              retry_for=retry_for)[0]


def publish_events(
    session: Session,
    settings: Settings,
    *,
    partner_id: str,
    events: Sequence[Mapping[str, Any]],
    now: datetime | None = None,
) -> list[Published]:
    """Publish many events of one partner in one transaction (bulk producers).

    Rows are written with multi-row INSERTs, sequence numbers are reserved per endpoint in
    one statement, and deliveries are enqueued after the commit as batches, so a large
    publish costs a handful of round trips.

    An event may carry an ``idempotency_key`` (unique per partner): one SELECT finds the
    events already recorded under the publish's keys, and for those nothing is written:
    their result is the recorded event and its notification's current status. A key
    recorded for a different event is ``IdempotencyKeyReused``, a key given twice in one
    publish ``ValidationFailed``; either refuses the whole publish. When a concurrent
    publish with one of the keys commits first, this one's INSERT fails with
    IntegrityError and rolls everything back (``publish_and_commit`` runs it again, and
    it finds that event).
    """
    now = now or utcnow()
    partner = session.connection().execute(_PARTNER, {"partner_id": partner_id}
                                           ).one_or_none()
    if partner is None:
        raise PartnerNotFound()
    enabled = bool(partner.enabled) and not_receiving_webhooks(partner.active,
                                                                partner.flow) is None
    default_url = partner.url
    # Built first: a payload that is not JSON refuses the publish before anything is done.
    new_events = [_new_event(partner_id, spec, now) for spec in events]
    # Looked up before the URL checks (which resolve host names): a publish repeated after
    # an unknown outcome gets its recorded events even if a callback URL no longer passes.
    recorded = _recorded(session, partner_id, events)
    fresh = [spec for spec in events if spec.get("idempotency_key") not in recorded]
    checked: set[str] = set()
    for spec in fresh:
        callback_url = spec.get("callback_url")
        if callback_url and callback_url not in checked:
            netguard.validate_url(callback_url, allow_private=settings.allow_private_urls)
            checked.add(callback_url)

    urls: dict[str, int] = {}
    for spec in fresh:
        url = spec.get("callback_url") or default_url
        if url and enabled:
            urls[url] = urls.get(url, 0) + 1
    # url -> (endpoint id, next number to hand out, disabled reason)
    numbering: dict[str, list[Any]] = {}
    # In URL order: two bulk publishes reserving the same endpoints lock their rows in
    # the same order, so one waits for the other instead of both deadlocking.
    for url, count in sorted(urls.items()):
        numbering[url] = list(reserve_sequences(session, partner_id, url, now, count))

    event_rows: list[dict[str, Any]] = []
    notification_rows: list[dict[str, Any]] = []
    published: list[Published] = []
    to_deliver: list[str] = []
    for spec, (event, body) in zip(events, new_events, strict=True):
        key = spec.get("idempotency_key")
        if key is not None and key in recorded:
            published.append(recorded[key])
            continue
        event_rows.append({"id": event.id, "partner_id": partner_id, "type": event.type,
                           "reference": event.reference, "payload": event.payload,
                           "callback_url": event.callback_url, "body": body,
                           "created_at": now,
                           "idempotency_key": spec.get("idempotency_key")})
        url = event.callback_url or default_url
        row: dict[str, Any] = {
            "id": new_id(), "partner_id": partner_id, "event_id": event.id, "url": url,
            "endpoint_id": None, "sequence": None, "status": NotificationStatus.NOT_SENT,
            "retry_attempts": 0, "manual_retry_count": 0, "attempt_count": 0,
            "latest_error_payload": None, "next_attempt_at": None, "cycle_started_at": now,
            "sent_at": None, "lane": Lane.FIRST, "held": False, "lease_token": None,
            "lease_expires_at": None, "scheduled_for": None, "enqueued_at": None,
            "created_at": now, "updated_at": now,
        }
        if not url or not enabled:
            reason = "No webhook URL configured" if not url else "Webhooks are disabled"
            row["latest_error_payload"] = error_payload(FailureKind.NO_URL, reason)
        else:
            slot = numbering[url]
            row["endpoint_id"], row["sequence"] = slot[0], slot[1]
            slot[1] += 1
            if slot[2] is not None:
                row["latest_error_payload"] = error_payload(FailureKind.ENDPOINT_DISABLED,
                                                            slot[2])
            else:
                row.update(status=NotificationStatus.PENDING, next_attempt_at=now,
                           scheduled_for=now, enqueued_at=now)
                to_deliver.append(row["id"])
        notification_rows.append(row)
        published.append(Published(event.id, row["id"], row["status"], row["sequence"]))
    if event_rows:
        # Table-level INSERTs: plain executemany, none of the ORM's bulk machinery.
        connection = session.connection()
        connection.execute(insert(_EVENTS), event_rows)
        connection.execute(insert(_NOTIFICATIONS), notification_rows)
    size = max(1, settings.delivery_batch_size)
    for start in range(0, len(to_deliver), size):
        on_commit(session, functools.partial(enqueue_batch, to_deliver[start:start + size],
                                             Lane.FIRST))
    return published
