"""The failing-endpoint alert: raised after the fifth failed automatic retry, once per
failing period."""

from __future__ import annotations

import json

from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.models import Alert, Endpoint, NotificationStatus, utcnow
from deliverer.retry_ladder import Ladder
from tests.support import receiver as rx
from tests.support.helpers import deliver_when_due, insert_notification, new_partner


def _failing(settings, receiver) -> tuple[str, str]:
    """A partner whose webhook URL answers 500, and a notification due there: (its id,
    the URL)."""
    url = receiver.always("/alerting", rx.status(500))
    partner = new_partner(settings, url)
    return insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow()), url


def _fast(override_settings):
    return override_settings(ladder=Ladder(steps=(0.01,), repeat=0.01, max_age=60),
                             time_scale=1.0)


def test_alert_after_the_fifth_failed_retry_once_per_failing_period(
        settings, receiver, override_settings):
    nid, _url = _failing(settings, receiver)
    with _fast(override_settings) as s:
        service.deliver(nid, s)  # first attempt
        for retry in range(1, 8):
            deliver_when_due(nid, s)
            with session_scope() as session:
                alerts = list(session.scalars(select(Alert)))
            # First attempt + 5 retries failed: alert after the fifth retry, only once.
            assert len(alerts) == (1 if retry >= 5 else 0), retry
    alert = alerts[0]
    assert alert.kind == "endpoint_failing" and alert.notification_id == nid
    assert json.dumps(alert.message)
    assert "has failed 6 attempts in a row; last error: HTTP 500" in alert.message


def test_the_alert_counts_the_endpoints_failures_not_its_heads(settings, receiver,
                                                                override_settings):
    """Other notifications' attempts failed before the head's fifth retry (a burst's
    first attempts): the alert said the head's 6 where the endpoint had failed 56 times
    in a row, as the portal and the console showed."""
    nid, url = _failing(settings, receiver)
    with _fast(override_settings) as s:
        service.deliver(nid, s)
        with session_scope() as session:
            session.execute(update(Endpoint).where(Endpoint.url == url).values(
                consecutive_failures=Endpoint.consecutive_failures + 50))
        for _ in range(5):
            deliver_when_due(nid, s)
    with session_scope() as session:
        [message] = session.scalars(select(Alert.message))
    assert "has failed 56 attempts in a row" in message, message
