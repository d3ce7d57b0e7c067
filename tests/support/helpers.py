"""Small helpers shared by the tests: making rows, reading them back, waiting for them."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from celery.signals import task_postrun
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

import deliverer
from deliverer.config import Settings
from deliverer.db import session_scope
from deliverer.delivery.service import AttemptOutcome, ClaimState, deliver
from deliverer.models import (
    ApiKey,
    Attempt,
    Endpoint,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    utcnow,
)
from deliverer.models.base import new_id
from deliverer.partners.endpoints import next_sequence
from deliverer.partners.service import NewPartner, Principal, create_partner
from deliverer.publishing.envelope import event_body
from tests.support.waiting import wait_until as wait_until  # shared by every test area


@contextmanager
def task_runs(task_id: str | None = None, name: str | None = None) -> Iterator[list[str]]:
    """The states (SUCCESS, RETRY, FAILURE...) in which the session's worker finished each
    run of the task ``task_id``, or of the tasks called ``name``, while in the block."""
    runs: list[str] = []

    def finished(task_id: str | None = None, task: Any = None, state: str | None = None,
                 **_: Any) -> None:
        if task_id == wanted_id or (name is not None and getattr(task, "name", None) == name):
            runs.append(str(state))

    wanted_id = task_id
    task_postrun.connect(finished, weak=False)
    try:
        yield runs
    finally:
        task_postrun.disconnect(finished)


def deliver_when_due(nid: str, settings: Settings, timeout: float = 5.0) -> AttemptOutcome:
    """Deliver ``nid`` as soon as it is due (its next attempt may be moments away)."""

    def delivered() -> AttemptOutcome | None:
        outcome = deliver(nid, settings)
        return None if outcome.state == ClaimState.NOT_DUE else outcome

    return wait_until(delivered, timeout, message=f"notification {nid} to become due")


def new_partner(settings: Settings, webhook_url: str | None, name: str = "Acme") -> NewPartner:
    with session_scope() as session:
        return create_partner(session, settings, name=name, webhook_url=webhook_url)


def principal(partner: NewPartner) -> Principal:
    """The partner acting with its API key, as the Partner API would authenticate it."""
    with session_scope() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.partner_id == partner.partner_id))
    return Principal(partner.partner_id, key_id)


def notification(nid: str) -> Notification:
    """A detached snapshot of the notification row."""
    with session_scope() as session:
        row = session.get(Notification, nid)
        assert row is not None, f"notification {nid} not found"
        session.expunge(row)
        return row


def attempts(nid: str) -> list[Attempt]:
    with session_scope() as session:
        rows = list(session.scalars(
            select(Attempt).where(Attempt.notification_id == nid).order_by(Attempt.id)))
        session.expunge_all()
        return rows


def triggers(nid: str) -> list[str]:
    return [a.trigger for a in attempts(nid)]


def status_is(nid: str, *statuses: str) -> Notification | None:
    row = notification(nid)
    return row if row.status in statuses else None


def sent(nid: str) -> Notification | None:
    return status_is(nid, NotificationStatus.SENT)


def publish_and_wait(partner_id: str, *statuses: str, reference: str | None = None,
                     event_type: str = "transaction.updated",
                     payload: dict[str, Any] | None = None,
                     callback_url: str | None = None, timeout: float = 15.0) -> str:
    """Publish through the real pipeline and wait until the worker settles it."""
    published = deliverer.publish_event(partner_id, event_type,
                                        reference or f"ref-{new_id()[:8]}",
                                        payload or {"amount": 1000}, callback_url)
    wait_until(lambda: status_is(published.notification_id, *statuses), timeout=timeout,
               message=f"notification {published.notification_id} in {statuses}")
    return published.notification_id


def insert_notification(
    partner_id: str,
    url: str | None,
    *,
    status: str,
    next_attempt_at: datetime | None = None,
    scheduled_for: datetime | None = None,
    enqueued_at: datetime | None = None,
    lane: str | None = None,
    cycle_started_at: datetime | None = None,
    lease_expires_at: datetime | None = None,
    created_at: datetime | None = None,
    reference: str | None = None,
    event_type: str = "transaction.updated",
    payload: dict[str, Any] | None = None,
    callback_url: str | None = None,
    retry_attempts: int = 0,
    manual_retry_count: int = 0,
    latest_error_payload: dict[str, Any] | None = None,
) -> str:
    """Write an event and its notification directly, with no broker message.

    For tests that drive the sweep, the services or the API by hand: nothing is enqueued,
    so the worker (if running) only sees the row when the test says so. ``status`` is
    required: a PENDING row with a ``next_attempt_at`` is due for the sweep, a FAILED one
    with none is exhausted and left alone. Unless given, the lane follows the status
    (RETRY for FAILED, FIRST otherwise), and a SENT row has its ``sent_at``.
    """
    now = created_at or utcnow()
    with session_scope() as session:
        event = Event(id=new_id(), partner_id=partner_id, type=event_type,
                      reference=reference or f"ref-{new_id()[:8]}",
                      payload=payload or {"amount": 42}, callback_url=callback_url,
                      created_at=now)
        event.body = event_body(event)
        session.add(event)
        endpoint_id = sequence = None
        target = callback_url or url
        if target:
            endpoint_id, sequence = next_sequence(session, partner_id, target, now)
        if lane is None:
            lane = Lane.RETRY if status == NotificationStatus.FAILED else Lane.FIRST
        nid = new_id()
        session.add(Notification(
            id=nid, partner_id=partner_id, event_id=event.id, endpoint_id=endpoint_id,
            sequence=sequence, url=target, status=status, retry_attempts=retry_attempts,
            manual_retry_count=manual_retry_count,
            attempt_count=retry_attempts + manual_retry_count,
            latest_error_payload=latest_error_payload, next_attempt_at=next_attempt_at,
            scheduled_for=scheduled_for, enqueued_at=enqueued_at,
            cycle_started_at=cycle_started_at or now, created_at=now, updated_at=now,
            lane=lane, sent_at=now if status == NotificationStatus.SENT else None,
            lease_token="held" if lease_expires_at else None, lease_expires_at=lease_expires_at,
        ))
    return nid


def event_body_of(nid: str) -> bytes:
    with session_scope() as session:
        body = session.scalar(
            select(Event.body).join(Notification, Notification.event_id == Event.id)
            .where(Notification.id == nid))
        assert body is not None
        return body.encode()


def endpoint_sequences(partner_id: str, url: str) -> tuple[int, list[int]]:
    """(endpoint.last_sequence, sorted sequences of its notifications)."""
    with session_scope() as session:
        endpoint = session.scalar(
            select(Endpoint).where(Endpoint.partner_id == partner_id, Endpoint.url == url))
        assert endpoint is not None
        seqs = sorted(session.scalars(
            select(Notification.sequence).where(Notification.endpoint_id == endpoint.id)))
        return endpoint.last_sequence, [int(s) for s in seqs]


def verify_signature(secret: str, recorded: Any) -> dict[str, Any]:
    """Verify a received request with the reference ``standardwebhooks`` implementation."""
    headers = {name: recorded.headers[name]
               for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    Webhook(secret).verify(recorded.body, headers)
    return json.loads(recorded.body)


UNRESOLVABLE = "nonexistent.invalid"


@contextmanager
def unresolvable_host() -> Iterator[str]:
    """A host name whose lookup fails as a DNS failure does, without a query leaving the
    machine (a real look-up of a .invalid name still asks the configured resolver)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == UNRESOLVABLE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield UNRESOLVABLE
    finally:
        socket.getaddrinfo = real
