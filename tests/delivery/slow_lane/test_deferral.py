"""A delivery beyond a slow endpoint's cap is deferred (no request, no attempt), counted
once its transaction commits, and sent later, once each; an endpoint slow at its old URL
is not slow at its new one."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta

from sqlalchemy.exc import OperationalError

from deliverer import metrics
from deliverer.db import in_transaction, session_scope
from deliverer.delivery import service
from deliverer.delivery.sending import slow_lane
from deliverer.delivery.service import ClaimState
from deliverer.models import NotificationStatus, utcnow
from deliverer.partners import webhook_settings
from deliverer.publishing.api import publish_events
from deliverer.scheduling.tasks import sweep_due
from tests.delivery.slow_lane.helpers import SLOW, endpoint_key_of, mark_slow, slow_settings
from tests.support import helpers as h
from tests.support import receiver as rx


def test_a_delivery_beyond_the_cap_is_deferred_without_a_request(settings, receiver):
    # Sends hang until the 2 s timeout; in flight for 0.3 s makes the endpoint slow.
    s = slow_settings(settings).with_overrides(total_timeout=2.0, slow_send_seconds=0.3)
    slow_url = receiver.always("/slow", rx.sleep(3.0))
    fine_url = receiver.always("/fine", rx.ok())
    partner = h.new_partner(settings, slow_url)
    now = utcnow()
    first, second, third = (h.insert_notification(partner.partner_id, slow_url,
                                                  status=NotificationStatus.PENDING,
                                                  next_attempt_at=now) for _ in range(3))
    healthy = h.insert_notification(partner.partner_id, fine_url, status=NotificationStatus.PENDING,
                                    next_attempt_at=now)

    outcomes: dict[str, service.AttemptOutcome] = {}
    threads = [threading.Thread(target=lambda n=n: outcomes.update({n: service.deliver(n, s)}))
               for n in (first, second)]
    for t in threads:
        t.start()
    receiver.wait_for(2, "/slow")
    # Both sends hang; once they have been in flight for slow_send_seconds the endpoint
    # is slow, and it already has its 2 sends in flight here.
    h.wait_until(lambda: slow_lane.GATE.is_slow(endpoint_key_of(first), s),
                 message="endpoint seen as slow")
    before = utcnow()
    deferred = service.deliver(third, s)
    assert deferred.state == ClaimState.DEFERRED
    row = h.notification(third)
    assert row.status == NotificationStatus.PENDING
    assert row.lease_token is None and row.lease_expires_at is None
    assert row.scheduled_for is None  # the beat sweep hands it over again when due
    assert row.next_attempt_at is not None
    # A timeout or two later: by then the sends in flight are over, one way or the other.
    assert before + timedelta(seconds=2.0) <= row.next_attempt_at
    assert row.next_attempt_at <= utcnow() + timedelta(seconds=4.0)
    assert row.attempt_count == 0 and h.attempts(third) == []

    # Other endpoints go on while the slow one's sends hang.
    assert service.deliver(healthy, s).status == NotificationStatus.SENT
    for t in threads:
        t.join(timeout=10)
    assert [r.headers["webhook-id"] for r in receiver.requests("/slow")].count(third) == 0
    for nid in (first, second):
        [attempt] = h.attempts(nid)
        assert attempt.error_payload["kind"] == "timeout"


def test_deferred_deliveries_are_sent_later_once_each(settings, worker, receiver,
                                                      override_settings, monkeypatch):
    # The endpoint is slow and every answer too (0.4 s, past slow_send_seconds, within
    # the timeout): of each batch the cap's sends go, the jobs waiting behind them are
    # deferred, swept again later, and in the end each is sent once.
    deferred: set[str] = set()
    defer = slow_lane.defer

    def recorded(session, ids, *args, **kwargs):
        deferred.update(ids)
        return defer(session, ids, *args, **kwargs)

    monkeypatch.setattr(slow_lane, "defer", recorded)
    url = receiver.always("/slow", rx.sleep(0.4))
    with override_settings(**{**SLOW, "slow_send_seconds": 0.3, "total_timeout": 1.5}) as s:
        partner = h.new_partner(s, url)
        first = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                      next_attempt_at=None)
        mark_slow(endpoint_key_of(first), s)
        published = publish_events(partner.partner_id, [
            {"type": "transaction.paid", "reference": f"TXN-{i}", "payload": {"n": i}}
            for i in range(6)])
        ids = {p.notification_id for p in published}
        h.wait_until(
            lambda: all(h.sent(n) for n in ids), timeout=30, interval=0.1,
            on_poll=sweep_due, message="every deferred delivery sent in the end")

    got = Counter(r.headers["webhook-id"] for r in receiver.requests("/slow"))
    assert set(got) == ids and set(got.values()) == {1}  # one POST each, none lost
    for nid in ids:
        [attempt] = h.attempts(nid)
        assert attempt.success
    assert deferred and deferred <= ids  # some waited behind a slow answer, and came back


def test_a_deferral_is_counted_once_its_transaction_commits(settings, monkeypatch):
    # A transaction run again after a deadlock defers again: the metric counts the
    # committed run only.
    counted: list[tuple[int, str]] = []
    monkeypatch.setattr(metrics, "observe_deferred",
                        lambda n, reason="slow_endpoint": counted.append((n, reason)))
    runs: list[int] = []

    def work(session):
        slow_lane.defer(session, [str(uuid.uuid4())], "token", settings)
        runs.append(len(runs))
        if len(runs) == 1:
            raise OperationalError("UPDATE notifications", {}, Exception("deadlock detected"))

    in_transaction(work, retry_for=5.0)
    assert runs == [0, 1] and counted == [(1, "slow_endpoint")]


def test_an_endpoint_slow_at_its_old_url_is_not_slow_at_its_new_one(settings, receiver):
    """Moved away from a URL that hung, an endpoint's deliveries to its new URL were
    deferred (15-30 s each) while the old URL's slow window and sends in flight lasted:
    slowness is the server's at a URL (a black-box try)."""
    s = slow_settings(settings)
    old, new = receiver.url("/hung"), receiver.always("/new", rx.ok())
    partner = h.new_partner(settings, old)
    nid = h.insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    slow = endpoint_key_of(nid)
    mark_slow(slow, s)
    hung = [slow_lane.GATE.admit(slow, s) for _ in range(s.slow_endpoint_concurrency)]
    assert all(hung) and slow_lane.GATE.admit(slow, s) is None  # at its cap
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner.partner_id, url=new)
    assert service.deliver(nid, s).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 1
