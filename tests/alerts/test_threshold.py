"""The failing-endpoint alert: raised after the fifth failed automatic retry, once per
failing period."""

from __future__ import annotations

import json

from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.models import Alert, NotificationStatus, utcnow
from deliverer.retry_ladder import Ladder
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
