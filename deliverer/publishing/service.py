"""Publishing an event: the event row, its notification and its sequence number in one
transaction; the delivery message is sent only after that commit.

A publish may carry the producer's idempotency key (its Idempotency-Key header, or the
Celery task id of ``deliverer.publish_event``): publishing again with the same key,
because the first call's outcome was not known (an error that may have followed its
commit, a redelivered task), returns the event the first call recorded instead of
recording a second one, whose webhook would reach the merchant under another webhook-id
(``idempotency.py``).

``record_events`` writes in the caller's transaction; producers publish each in a
transaction of its own (``own_transaction.py``): on PostgreSQL one event is published by
one statement (``one_statement.py``), which decides as ``record_events``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from deliverer.broker.dispatch import enqueue_batch, enqueue_wake
from deliverer.config import Settings
from deliverer.db import on_commit
from deliverer.delivery.sending import netguard
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.delivery.wakeups import wake
from deliverer.errors import PartnerNotFound
from deliverer.models import (
    Endpoint,
    Lane,
    Partner,
    WebhookSettings,
    not_receiving_webhooks,
    subscribed,
    utcnow,
)
from deliverer.partners.endpoints import (
    DISABLED,
    hold_publishes,
    lock_for_publish,
    reserve_for_endpoints,
    reserve_sequences,
)
from deliverer.publishing.envelope import new_event
from deliverer.publishing.idempotency import recorded_events
from deliverer.publishing.published import Delivery, Published
from deliverer.publishing.rows import (
    NO_URL,
    event_row,
    made_pending,
    no_subscriber,
    not_pushed,
    notification_row,
    write_rows,
)

# Publishing's statements are built once, with bind parameters: building them per call
# cost more CPU than executing them (SQLAlchemy's compiled cache spares only the
# compilation). They run on the session's connection: they are Core statements, and the
# ORM's execute path adds its own cost for nothing.
# The partner and its registered endpoints, one row per endpoint: one round trip.
_PARTNER = (
    select(Partner.active, Partner.flow, WebhookSettings.enabled, WebhookSettings.url,
           Endpoint.id, Endpoint.public_id, Endpoint.url, Endpoint.event_types,
           Endpoint.disabled_at, Endpoint.disabled_reason, Endpoint.is_default)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == Partner.id)
    .outerjoin(Endpoint, and_(Endpoint.partner_id == Partner.id,
                              Endpoint.registered.is_(True)))
    .where(Partner.id == bindparam("partner_id"))
    # The default endpoint first: its notification is the one older routes report.
    .order_by(Endpoint.is_default.desc(), Endpoint.id)
)


@dataclass(frozen=True)
class _Target:
    """Where one notification of an event goes."""

    url: str
    endpoint_key: int | None  # a registered endpoint's id; None: by URL (callbackUrl)
    public_id: str | None
    disabled: str | None


def record_event(
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
    """Publish one event: the one-event case of ``record_events``, keys included."""
    event = {"type": type, "reference": reference, "payload": payload,
             "callback_url": callback_url, "idempotency_key": idempotency_key}
    return record_events(session, settings, partner_id=partner_id, events=[event], now=now)[0]


def record_events(
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

    An event with an ``endpoint`` (a registered endpoint's public id) goes to that
    endpoint only, whatever it subscribes to.

    An event may carry an ``idempotency_key`` (unique per partner): one SELECT finds the
    events already recorded under the publish's keys, and for those nothing is written:
    their result is the recorded event and its notification's current status. A key
    recorded for a different event is ``IdempotencyKeyReused``, a key given twice in one
    publish ``ValidationFailed``; either refuses the whole publish. When a concurrent
    publish with one of the keys commits first, this one's INSERT fails with
    IntegrityError and rolls everything back (``publish`` runs it again, and
    it finds that event).
    """
    now = now or utcnow()
    # First, on its own: the partner's publish before this one has committed when the
    # next statement reads the partner and its endpoints.
    hold_publishes(session, partner_id)
    rows = session.connection().execute(_PARTNER, {"partner_id": partner_id}).all()
    if not rows:
        raise PartnerNotFound()
    partner = rows[0]
    enabled = bool(partner.enabled) and not_receiving_webhooks(partner.active,
                                                                partner.flow) is None
    endpoints = [
        (_Target(r[6], r[4], r[5], (r[9] or DISABLED) if r[8] else None), r[7])
        for r in rows if r[4] is not None]
    default_url = partner.url
    # Built first: a payload that is not JSON refuses the publish before anything is done.
    new_events = [new_event(partner_id, spec, now) for spec in events]
    # Looked up before the URL checks: a publish repeated after an unknown outcome gets
    # its recorded events even if a callback URL no longer passes.
    recorded = recorded_events(session, partner_id, events)
    fresh = [spec for spec in events if spec.get("idempotency_key") not in recorded]
    checked: set[str] = set()
    for spec in fresh:
        callback_url = spec.get("callback_url")
        if callback_url and callback_url not in checked:
            netguard.validate_url(callback_url, allow_private=settings.allow_private_urls)
            checked.add(callback_url)

    def targets_of(event_type: str, callback_url: str | None,
                   only: str | None) -> list[_Target]:
        if callback_url:
            return [_Target(callback_url, None, None, None)]
        if only is not None:
            # One endpoint, whatever it subscribes to (POST /endpoints/{id}/test).
            return [t for t, _types in endpoints if t.public_id == only]
        matching = [t for t, types in endpoints if subscribed(types, event_type)]
        if not endpoints and default_url:
            # A webhook URL saved without its default endpoint row (written by hand, or
            # by a version before endpoints were registered): sent as it always was.
            matching = [_Target(default_url, None, None, None)]
        return matching

    plans = [targets_of(spec["type"], spec.get("callback_url"), spec.get("endpoint"))
             if enabled else [] for spec in fresh]
    by_url: dict[str, int] = {}
    by_endpoint: dict[int, int] = {}
    for targets in plans:
        for target in targets:
            if target.endpoint_key is None:
                by_url[target.url] = by_url.get(target.url, 0) + 1
            else:
                by_endpoint[target.endpoint_key] = by_endpoint.get(target.endpoint_key, 0) + 1
    # url or endpoint id -> [endpoint id, next number to hand out, disabled reason, public
    # id of a URL's endpoint]
    numbering: dict[Any, list[Any]] = {}
    # The endpoints this publish sends a wake-up to (none pending), when it sends those
    # rather than a message per notification (``delivery/wakeups/wake.py``).
    stale = wake.wake_stale(settings, now)
    lock_for_publish(session, partner_id, by_endpoint, by_url)
    numbers, woken = reserve_for_endpoints(session, by_endpoint, now, stale)
    for endpoint_key, number in numbers.items():
        numbering[endpoint_key] = [endpoint_key, number, None, None]
    # In URL order: two bulk publishes reserving the same endpoints lock their rows in
    # the same order, so one waits for the other instead of both deadlocking.
    for target_url, count in sorted(by_url.items()):
        endpoint_id, number, disabled, woke, public_id = reserve_sequences(
            session, partner_id, target_url, now, count, stale)
        numbering[target_url] = [endpoint_id, number, disabled, public_id]
        if woke:
            woken.add(endpoint_id)

    event_rows: list[dict[str, Any]] = []
    notification_rows: list[dict[str, Any]] = []
    published: list[Published] = []
    # By endpoint: a batch's task records its outcomes once all its POSTs are over, so
    # an endpoint that hangs must not share a batch with another endpoint of the partner.
    to_deliver: dict[object, list[str]] = {}
    by_wake: dict[int, list[str]] = {}
    plan_of = iter(plans)
    for spec, (event, body) in zip(events, new_events, strict=True):
        key = spec.get("idempotency_key")
        if key is not None and key in recorded:
            published.append(recorded[key])
            continue
        event_rows.append(event_row(event, body, key))
        targets = next(plan_of)
        deliveries: list[Delivery] = []
        if not targets:
            no_url: str | None = event.callback_url or default_url
            if not enabled:
                payload = not_pushed(partner.active, partner.flow, partner.enabled)
            elif endpoints:
                no_url = None
                payload = error_payload(FailureKind.NO_URL, no_subscriber(event.type))
            else:
                payload = error_payload(FailureKind.NO_URL, NO_URL)
            row = notification_row(partner_id, event.id, no_url, now)
            row["latest_error_payload"] = payload
            notification_rows.append(row)
            deliveries.append(Delivery(row["id"], row["status"], None, None))
        for target in targets:
            row = notification_row(partner_id, event.id, target.url, now)
            slot = numbering[target.url if target.endpoint_key is None
                             else target.endpoint_key]
            row["endpoint_id"], row["sequence"] = slot[0], slot[1]
            slot[1] += 1
            disabled = target.disabled or slot[2]
            if disabled is not None:
                row["latest_error_payload"] = error_payload(FailureKind.ENDPOINT_DISABLED,
                                                            disabled)
            else:
                row.update(made_pending(now))
                if stale is None:
                    to_deliver.setdefault(row["endpoint_id"] or target.url,
                                          []).append(row["id"])
                elif slot[0] in woken:
                    by_wake.setdefault(slot[0], []).append(row["id"])
                # Otherwise a wake-up is pending for the endpoint: it takes this one.
            notification_rows.append(row)
            # A callback URL's endpoint has an id too: its notifications reconcile by it
            # (it answered null: two black-box tries).
            deliveries.append(Delivery(row["id"], row["status"], row["sequence"],
                                       target.public_id or slot[3]))
        first = deliveries[0]
        published.append(Published(event.id, first.notification_id, first.status,
                                   first.sequence, tuple(deliveries)))
    if event_rows:
        write_rows(session.connection(), event_rows, notification_rows)
    for endpoint_id, ids in by_wake.items():
        on_commit(session, functools.partial(enqueue_wake, endpoint_id, ids))
    size = max(1, settings.delivery_batch_size)
    for ids in to_deliver.values():
        for start in range(0, len(ids), size):
            on_commit(session, functools.partial(enqueue_batch, ids[start:start + size],
                                                 Lane.FIRST))
    return published
