"""Fixtures of the Partner API tests: the live server and partners to call it as."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

import deliverer.config
from deliverer.config import Settings
from deliverer.db import in_transaction, is_transient_abort, session_scope
from deliverer.models import Notification, PartnerRequest, utcnow
from deliverer.partners.service import create_partner
from tests.api.helpers import ApiPartner
from tests.support.live_server import ApiClient, LiveServer, app_server

ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="session")
def live_server(settings: Settings, celery_app: Celery) -> Iterator[LiveServer]:
    """``api.create_app`` on a threaded werkzeug server on 127.0.0.1, for the session."""
    with app_server(settings, celery_app, admin_token=ADMIN_TOKEN) as server:
        yield server


@pytest.fixture
def api_url(live_server: LiveServer) -> str:
    return live_server.url


@pytest.fixture
def anonymous(live_server: LiveServer) -> ApiClient:
    return ApiClient(live_server.url)


@pytest.fixture
def admin(live_server: LiveServer) -> ApiClient:
    return ApiClient(live_server.url, ADMIN_TOKEN, auth="bearer")


@pytest.fixture
def make_partner(settings: Settings, live_server: LiveServer) -> Callable[..., ApiPartner]:
    """``make_partner(url, flow="WEBHOOK", name="Acme")``: a partner and its API clients."""

    def make(url: str | None = None, *, flow: str = "WEBHOOK", name: str = "Acme",
             alert_email: str | None = None) -> ApiPartner:
        with session_scope() as session:
            created = create_partner(session, settings, name=name, webhook_url=url, flow=flow,
                                     alert_email=alert_email)
        return ApiPartner(
            partner_id=created.partner_id,
            api_key=created.api_key,
            signing_secret=created.signing_secret,
            api=ApiClient(live_server.url, created.api_key),
            bearer=ApiClient(live_server.url, created.api_key, auth="bearer"),
        )

    return make


@pytest.fixture
def api_settings(live_server: LiveServer) -> Callable[..., Any]:
    """``with api_settings(resend_wait_seconds=0.2):`` changes what the API (and worker) read."""
    return live_server.overridden


@pytest.fixture
def long_wait(api_settings):
    """Room for the worker to deliver within the request (a resend, a test event) on a
    busy machine."""
    with api_settings(resend_wait_seconds=10.0) as changed:
        yield changed


@pytest.fixture
def slow_ladder(settings: Settings) -> Iterator[Settings]:
    """Real-time ladder for this test: after a failure the next automatic attempt is two
    minutes away, so a FAILED notification stays put while the test works on it."""
    changed = settings.with_overrides(time_scale=1.0)
    deliverer.config.set_settings(changed)
    try:
        yield changed
    finally:
        deliverer.config.set_settings(settings)


def _in_flight() -> int:
    now = utcnow()
    with session_scope() as session:
        # A voided lease (no token, its time kept) is a POST still out too.
        leased = session.scalar(select(func.count()).select_from(Notification).where(
            Notification.lease_expires_at > now))
        sending = session.scalar(select(func.count()).select_from(PartnerRequest).where(
            PartnerRequest.delivery_status == "SENDING"))
        return int(leased or 0) + int(sending or 0)


@pytest.fixture(autouse=True)
def _quiesce_deliveries(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, stop its retries and let attempts in flight finish.

    The session's worker outlives the test: a failing notification would keep climbing
    the (time-scaled) ladder and write attempts while the next test empties the tables.
    """
    yield
    if request.node.get_closest_marker("unit") is not None:
        return

    def stop_retries(session: Session) -> None:
        session.execute(
            update(Notification).where(Notification.next_attempt_at.is_not(None))
            .values(next_attempt_at=None, scheduled_for=None)
            .execution_options(synchronize_session=False))
        session.execute(
            update(PartnerRequest).where(PartnerRequest.delivery_status == "PENDING")
            .values(delivery_status="CANCELLED")
            .execution_options(synchronize_session=False))

    # Run again if it loses a deadlock to the worker's claim or record (they lock rows
    # in another order than this UPDATE of every row).
    in_transaction(stop_retries, retry_for=10.0, only_if=is_transient_abort)
    deadline = time.monotonic() + 10
    while _in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
