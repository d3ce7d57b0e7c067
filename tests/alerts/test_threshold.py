"""The failing-endpoint alert: raised after the fifth failed automatic retry, once per
failing period, at most once an hour per endpoint."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select, update

from deliverer.config import Ladder
from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.models import Alert, Endpoint, NotificationStatus, utcnow
from tests.support import receiver as rx
from tests.support.helpers import deliver_when_due, insert_notification, new_partner


def test_alert_after_the_fifth_failed_retry_once_per_failing_period(
        settings, receiver, override_settings):
    url = receiver.always("/alerting", rx.status(500))
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    fast = override_settings(ladder=Ladder(steps=(0.01,), repeat=0.01, max_age=60),
                             time_scale=1.0)
    with fast as s:
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


def test_a_flapping_endpoint_is_alerted_at_most_once_an_hour(
        settings, receiver, override_settings):
    # Each success began a new failing period and each sixth failed retry mailed again:
    # 8 e-mails in 3 minutes to one merchant in the operator try.
    url = receiver.always("/flap", rx.status(500))
    partner = new_partner(settings, url)
    fast = override_settings(ladder=Ladder(steps=(0.01,), repeat=0.01, max_age=60),
                             time_scale=1.0)

    def alerts() -> list[str]:
        with session_scope() as session:
            return list(session.scalars(select(Alert.notification_id).order_by(Alert.id)))

    def failing_since():
        with session_scope() as session:
            return session.scalar(select(Endpoint.failing_since).where(Endpoint.url == url))

    with fast as s:
        head = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                   next_attempt_at=utcnow())
        service.deliver(head, s)
        for _ in range(6):
            deliver_when_due(head, s)
        assert alerts() == [head]
        receiver.always("/flap", rx.ok())  # another one's success: the endpoint recovers
        ok = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=utcnow())
        service.deliver(ok, s)
        assert failing_since() is None
        receiver.always("/flap", rx.status(500))
        for _ in range(3):  # a new failing period, within the hour: no alert
            deliver_when_due(head, s)
        assert failing_since() is not None and alerts() == [head]
        with session_scope() as session:  # the hour has passed
            session.execute(update(Endpoint).where(Endpoint.url == url).values(
                alerted_at=utcnow() - timedelta(hours=1, seconds=1)))
        deliver_when_due(head, s)
        assert alerts() == [head, head]
        deliver_when_due(head, s)  # once per failing period still
        assert alerts() == [head, head]
