"""Helpers for the Partner API tests: error shapes, rows written directly, thread bursts."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import requests
from sqlalchemy import func, select, update

import deliverer
from deliverer.db import session_scope
from deliverer.models import (
    ApiKey,
    Attempt,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    PartnerRequest,
    WebhookSettings,
    utcnow,
)
from deliverer.models.base import new_id
from deliverer.partners.endpoints import next_sequence
from deliverer.publishing.envelope import event_body
from tests.support import helpers as h
from tests.support.live_server import ApiClient

T = TypeVar("T")

ERROR_KEYS = {"statusCode", "code", "message"}

# Seed 000's messages, verbatim.
MISSING = "API Key is missing"
BAD_FORMAT = "Invalid API Key format"
INVALID = "Invalid API Key"
INVALID_FLOW = "The partner has an invalid flow."
NOT_FOUND = "Webhook notification not found"
NOT_FAILED = "Notification is not in FAILED status"
MAX_MANUAL = "Partner webhook notification has reached the maximum number of manual retries (3)"
RATE_LIMITED = "Rate limit exceeded. Try again in a few seconds."


@dataclass
class ApiPartner:
    partner_id: str
    api_key: str
    signing_secret: str
    api: ApiClient  # X-Api-Key
    bearer: ApiClient  # Authorization: Bearer


def assert_error(response: requests.Response, status: int, code: str | None = None,
                 message: str | None = None) -> dict[str, Any]:
    """The one error body: exactly statusCode, code, message (plus errors for validation)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("Content-Type", "").startswith("application/json"), \
        response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert ERROR_KEYS <= set(body) <= ERROR_KEYS | {"errors"}, body
    assert body["statusCode"] == status, body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["code"] == code, body
    if message is not None:
        assert body["message"] == message, body
    return body


def assert_client_error(response: requests.Response, status: int | None = None) -> dict[str, Any]:
    """A clear 4xx in the error format (any 4xx unless ``status`` is given)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return assert_error(response, status or response.status_code)


# --------------------------------------------------------------------------- rows


def insert_notification(
    partner_id: str,
    url: str | None,
    *,
    status: str = NotificationStatus.FAILED,
    reference: str | None = None,
    event_type: str = "transaction.updated",
    payload: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    manual_retry_count: int = 0,
    retry_attempts: int = 0,
    latest_error_payload: dict[str, Any] | None = None,
    next_attempt_at: datetime | None = None,
    callback_url: str | None = None,
) -> str:
    """An event and its notification written directly, no broker message.

    The default is FAILED with no next attempt (the ladder is exhausted), so nothing
    touches it until a test asks the API to.
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
        nid = new_id()
        session.add(Notification(
            id=nid, partner_id=partner_id, event_id=event.id, endpoint_id=endpoint_id,
            sequence=sequence, url=target, status=status, retry_attempts=retry_attempts,
            manual_retry_count=manual_retry_count,
            attempt_count=retry_attempts + manual_retry_count,
            latest_error_payload=latest_error_payload, next_attempt_at=next_attempt_at,
            cycle_started_at=now, created_at=now, updated_at=now,
            lane=Lane.RETRY if status == NotificationStatus.FAILED else Lane.FIRST,
            sent_at=now if status == NotificationStatus.SENT else None,
        ))
    return nid


def set_partner(partner_id: str, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(Partner).where(Partner.id == partner_id).values(**values))


def set_notification(nid: str, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == nid).values(**values))


def partner_requests(partner_id: str | None = None, **where: Any) -> list[PartnerRequest]:
    with session_scope() as session:
        query = select(PartnerRequest).order_by(PartnerRequest.id)
        if partner_id is not None:
            query = query.where(PartnerRequest.partner_id == partner_id)
        for name, value in where.items():
            query = query.where(getattr(PartnerRequest, name) == value)
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def accepted(partner_id: str, kind: str = "retry") -> list[PartnerRequest]:
    return partner_requests(partner_id, kind=kind, outcome="ACCEPTED")


def settings_row(partner_id: str) -> WebhookSettings:
    with session_scope() as session:
        row = session.get(WebhookSettings, partner_id)
        assert row is not None
        session.expunge(row)
        return row


def row_counts() -> dict[str, int]:
    """How many rows every table the API may write to holds (to prove nothing changed)."""
    models = {"events": Event, "notifications": Notification, "attempts": Attempt,
              "partner_requests": PartnerRequest, "partners": Partner, "api_keys": ApiKey,
              "webhook_settings": WebhookSettings}
    with session_scope() as session:
        return {name: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in models.items()}


def snapshot(nid: str) -> dict[str, Any]:
    """The columns a merchant can see, for before/after comparisons."""
    row = h.notification(nid)
    return {name: getattr(row, name) for name in (
        "status", "retry_attempts", "manual_retry_count", "attempt_count", "url",
        "latest_error_payload", "next_attempt_at", "cycle_started_at", "sent_at", "lane")}


def triggers(nid: str) -> list[str]:
    return [a.trigger for a in h.attempts(nid)]


def publish_and_wait(partner_id: str, *statuses: str, reference: str | None = None,
                     event_type: str = "transaction.updated",
                     payload: dict[str, Any] | None = None,
                     callback_url: str | None = None, timeout: float = 15.0) -> str:
    """Publish through the real pipeline and wait until the worker settles it."""
    published = deliverer.publish_event(partner_id, event_type,
                                        reference or f"ref-{new_id()[:8]}",
                                        payload or {"amount": 1000}, callback_url)
    h.wait_until(lambda: h.status_is(published.notification_id, *statuses), timeout=timeout,
                 message=f"notification {published.notification_id} in {statuses}")
    return published.notification_id


# --------------------------------------------------------------------------- bursts


def burst(calls: Sequence[Callable[[], T]], threads: int | None = None) -> list[T]:
    """Run every call at once from its own thread (released together by a barrier)."""
    n = len(calls)
    threads = threads or n
    barrier = threading.Barrier(min(n, threads))

    def run(call: Callable[[], T], index: int) -> T:
        if index < threads:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(run, call, i) for i, call in enumerate(calls)]
        return [f.result(timeout=120) for f in futures]


def statuses(responses: Sequence[requests.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)
