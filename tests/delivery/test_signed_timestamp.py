"""The signature's timestamp is the attempt's recorded start: the portal shows the
headers an attempt was sent with, webhook-timestamp from that start
(``portal.queries.headers_sent``). Read from another clock call a moment earlier, it
could fall in the second before (a gap review)."""

from __future__ import annotations

from datetime import UTC, datetime

from deliverer.delivery import service
from deliverer.delivery.sending import perform
from deliverer.models import NotificationStatus, utcnow
from deliverer.portal.queries import headers_sent
from tests.support.helpers import attempts, insert_notification, new_partner


def test_the_signed_timestamp_is_the_attempts_recorded_start(settings, receiver,
                                                              monkeypatch):
    url = receiver.url("/signed")
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    instant = datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC)  # a second's last moment
    monkeypatch.setattr(perform, "utcnow", lambda: instant)
    assert service.deliver(nid, settings).status == NotificationStatus.SENT
    [attempt] = attempts(nid)
    assert attempt.started_at == instant
    [request] = receiver.requests("/signed")
    shown = headers_sent(nid, attempt, settings)["webhook-timestamp"]
    assert request.headers["webhook-timestamp"] == shown == str(int(instant.timestamp()))
