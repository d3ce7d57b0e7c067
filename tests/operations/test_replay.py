"""Operator retries and bulk replay (deliverer.operations.replay), called directly."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliverer.broker import queues
from deliverer.db import get_database, session_scope
from deliverer.errors import Conflict, NotificationNotFound, NotPushed, PartnerNotFound
from deliverer.models import (
    Endpoint,
    Notification,
    NotificationStatus,
    Partner,
    PartnerFlow,
    utcnow,
)
from deliverer.notifications.audit import OPERATOR
from deliverer.operations.operator_actions import operator_ignore, operator_retry
from deliverer.operations.replay import ReplayFilter, ReplayResult, find_replayable, replay
from deliverer.partners import registered
from tests.operations.helpers import audit
from tests.support import helpers as h
from tests.support.db_faults import failing_inserts
from tests.support.receiver import Receiver
from tests.support.rows import failed, head_and_held, set_webhook_url


def _manual_publishes(published_tasks) -> list[str]:
    return [t["args"][0] for t in published_tasks
            if t["task"] == "deliverer.deliver" and t["queue"] == queues.MANUAL]


def test_replay_sends_a_partners_failed_notifications_in_order(settings, worker,
                                                                receiver: Receiver,
                                                                published_tasks):
    url = receiver.url("/shop")
    shop = h.new_partner(settings, url, name="Shop")
    other = h.new_partner(settings, receiver.url("/other"), name="Other")
    ids = [failed(shop.partner_id, url, created_ago=timedelta(minutes=10 - i)) for i in range(3)]
    delivered = h.insert_notification(shop.partner_id, url, next_attempt_at=None,
                                      status=NotificationStatus.SENT)
    ignored = failed(shop.partner_id, url, status=NotificationStatus.NOT_SENT)
    someone_elses = failed(other.partner_id, receiver.url("/other"))
    held = failed(shop.partner_id, url, held=True)

    progress: list[int] = []
    result = replay(settings, ReplayFilter(shop.partner_id), batch_size=2,
                    progress=progress.append)

    assert (result.matched, result.replayed, result.skipped) == (4, 4, 0)
    assert sum(progress) == 4 and progress == [2, 2]
    for nid in [*ids, held]:
        h.wait_until(lambda nid=nid: h.sent(nid), message=f"{nid} replayed and sent")
        row = h.notification(nid)
        assert row.manual_retry_count == 0 and row.held is False
        assert audit(nid) == [("retry", OPERATOR, None)]
    # Sent on the manual lane, oldest first.
    assert _manual_publishes(published_tasks) == [*ids, held]
    assert [r.path for r in receiver.requests()] == ["/shop"] * 4
    assert h.notification(delivered).status == NotificationStatus.SENT
    assert h.notification(ignored).status == NotificationStatus.NOT_SENT
    assert h.notification(someone_elses).status == NotificationStatus.FAILED
    assert audit(someone_elses) == [] and audit(ignored) == []


def test_replay_filters_by_endpoint_and_time_range_and_can_include_not_sent(
        settings, worker, receiver: Receiver):
    a, b = receiver.url("/a"), receiver.url("/b")
    shop = h.new_partner(settings, a)
    old_a = failed(shop.partner_id, a, created_ago=timedelta(days=3))
    mid_a = failed(shop.partner_id, a, created_ago=timedelta(days=1))
    mid_b = failed(shop.partner_id, b, created_ago=timedelta(days=1))
    mid_a_ignored = failed(shop.partner_id, a, created_ago=timedelta(days=1),
                           status=NotificationStatus.NOT_SENT)
    new_a = failed(shop.partner_id, a, created_ago=timedelta(minutes=1))

    now = utcnow()
    flt = ReplayFilter(shop.partner_id, endpoint_url=a, since=now - timedelta(days=2),
                       until=now - timedelta(hours=1))
    result = replay(settings, flt)
    assert (result.matched, result.replayed) == (1, 1)
    h.wait_until(lambda: h.sent(mid_a))
    for nid in (old_a, mid_b, new_a):
        assert h.notification(nid).status == NotificationStatus.FAILED
    assert h.notification(mid_a_ignored).status == NotificationStatus.NOT_SENT

    result = replay(settings, ReplayFilter(shop.partner_id, endpoint_url=a,
                                           since=now - timedelta(days=2),
                                           until=now - timedelta(hours=1),
                                           include_not_sent=True))
    assert (result.matched, result.replayed) == (1, 1)
    h.wait_until(lambda: h.sent(mid_a_ignored))


def test_replay_at_a_bounded_rate_spreads_the_attempts(settings, receiver: Receiver,
                                                       published_tasks):
    url = receiver.url("/recovered")
    shop = h.new_partner(settings, url)
    ids = [failed(shop.partner_id, url, created_ago=timedelta(minutes=5 - i)) for i in range(3)]
    started = utcnow()
    # 0.1 per second: one now, the next in 10 s and 20 s, beyond the 5 s sweep horizon of
    # the tests, so the beat sweep (not run here) would enqueue those when they are near.
    result = replay(settings, ReplayFilter(shop.partner_id), rate=0.1, now=started)
    assert result.replayed == 3
    second, third = h.notification(ids[1]), h.notification(ids[2])
    assert second.next_attempt_at == started + timedelta(seconds=10)
    assert third.next_attempt_at == started + timedelta(seconds=20)
    assert second.scheduled_for is None and third.scheduled_for is None
    assert second.status == third.status == NotificationStatus.PENDING
    assert _manual_publishes(published_tasks) == [ids[0]]


def test_replay_of_the_confirmed_ids_adds_none_failing_since(settings, published_tasks):
    """The CLI counts the matches, asks, then replays: a notification that fails in
    between was not confirmed and is not replayed; one delivered meanwhile is skipped."""
    url = "http://127.0.0.1:9/hook"
    shop = h.new_partner(settings, url)
    confirmed = [failed(shop.partner_id, url, created_ago=timedelta(minutes=5 - i))
                 for i in range(3)]
    flt = ReplayFilter(shop.partner_id)
    with session_scope() as session:
        ids = find_replayable(session, flt)
    assert ids == confirmed
    newcomer = failed(shop.partner_id, url)
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == confirmed[1])
                        .values(status=NotificationStatus.SENT))

    progress: list[int] = []
    result = replay(settings, flt, ids=ids, batch_size=2, progress=progress.append)
    assert (result.matched, result.replayed, result.skipped) == (3, 2, 1)
    assert sum(progress) == len(ids)
    assert _manual_publishes(published_tasks) == [confirmed[0], confirmed[2]]
    assert h.notification(newcomer).status == NotificationStatus.FAILED
    assert audit(newcomer) == []


def test_a_replay_batch_skips_locked_rows_and_replays_them_alone_after(settings,
                                                                      published_tasks):
    """A worker recording an attempt holds its notification's row (and may update others
    of its endpoint): a replay batch must not wait for it while holding the others, or
    the two deadlock. It replays the free ones, commits, then waits for the locked one
    alone."""
    if settings.is_sqlite:
        pytest.skip("row locks are PostgreSQL's; SQLite serialises write transactions")
    url = "http://127.0.0.1:9/hook"
    shop = h.new_partner(settings, url)
    first, locked, last = (failed(shop.partner_id, url, created_ago=timedelta(minutes=5 - i))
                           for i in range(3))
    holder = get_database().engine.connect()
    holder.execute(select(Notification.id).where(Notification.id == locked).with_for_update())
    results: list[ReplayResult] = []
    thread = threading.Thread(target=lambda: results.append(
        replay(settings, ReplayFilter(shop.partner_id))))
    thread.start()
    try:
        h.wait_until(lambda: audit(first) and audit(last),
                     message="the free notifications replayed while the other is locked")
        assert h.notification(locked).status == NotificationStatus.FAILED
        assert thread.is_alive()  # waiting for the locked one, alone
    finally:
        holder.rollback()
        holder.close()
    thread.join(10)
    assert not thread.is_alive()
    [result] = results
    assert (result.matched, result.replayed, result.skipped) == (3, 3, 0)
    assert _manual_publishes(published_tasks) == [first, last, locked]
    assert audit(locked) == [("retry", OPERATOR, None)]


def test_a_replay_batch_aborted_as_a_deadlock_victim_runs_again(settings, published_tasks):
    url = "http://127.0.0.1:9/hook"
    shop = h.new_partner(settings, url)
    ids = [failed(shop.partner_id, url, created_ago=timedelta(minutes=5 - i))
           for i in range(3)]
    with failing_inserts("partner_requests", ids[0], deadlock=True) as injected:
        result = replay(settings, ReplayFilter(shop.partner_id))
    assert injected == [1]
    assert (result.matched, result.replayed, result.skipped) == (3, 3, 0)
    assert _manual_publishes(published_tasks) == ids  # once each: the abort sent nothing
    for nid in ids:
        assert audit(nid) == [("retry", OPERATOR, None)]


def test_replay_of_an_unknown_partner(settings):
    with pytest.raises(PartnerNotFound):
        replay(settings, ReplayFilter("00000000-0000-0000-0000-000000000000"))


def _set_partner(partner_id: str, **values: object) -> None:
    with session_scope() as session:
        session.execute(update(Partner).where(Partner.id == partner_id).values(**values))


@pytest.mark.parametrize("change, reason", [
    ({"flow": PartnerFlow.POLLING}, "POLLING flow"),
    ({"active": False}, "inactive"),
])
def test_no_operator_pushes_to_a_partner_that_is_sent_no_webhook(settings, published_tasks,
                                                                  change, reason):
    """Publishing leaves a POLLING or inactive partner's notifications NOT_SENT; an
    operator's replay or retry must not push them either (a FAILED one from before the
    partner changed flow, or an ignored one)."""
    url = "http://127.0.0.1:9/hook"
    shop = h.new_partner(settings, url)
    nid = failed(shop.partner_id, url)
    not_sent = failed(shop.partner_id, url, status=NotificationStatus.NOT_SENT)
    _set_partner(shop.partner_id, **change)

    for include_not_sent in (False, True):
        with pytest.raises(NotPushed, match=reason):
            replay(settings, ReplayFilter(shop.partner_id, include_not_sent=include_not_sent))
    with session_scope() as session, pytest.raises(Conflict, match=reason):
        operator_retry(session, settings, nid)
    assert h.notification(nid).status == NotificationStatus.FAILED
    assert h.notification(not_sent).status == NotificationStatus.NOT_SENT
    assert audit(nid) == [] and audit(not_sent) == []
    assert _manual_publishes(published_tasks) == []


def test_no_operator_retries_what_its_claim_would_hold_again(settings, published_tasks):
    """Its endpoint disabled, or webhooks off: the console's Retry started a fresh cycle
    whose only outcome was the claim's synthetic error, in place of the real one (a
    black-box try). Refused as the merchant's retry is; replay skips them."""
    url = "http://127.0.0.1:9/hook"
    shop = h.new_partner(settings, url)
    nid = failed(shop.partner_id, url)
    before = h.notification(nid)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == before.endpoint_id).values(
            disabled_at=utcnow(), disabled_reason="Failed continuously for 25 hours"))
    with session_scope() as session, pytest.raises(
            Conflict, match="is disabled \\(Failed continuously for 25 hours\\): enable it "
                            "\\(save your webhook settings\\), then retry"):
        operator_retry(session, settings, nid)
    assert replay(settings, ReplayFilter(shop.partner_id)) == ReplayResult(1, 0, 1, held_back=1)
    after = h.notification(nid)
    assert (after.retry_attempts, after.latest_error_payload, after.cycle_started_at) == (
        before.retry_attempts, before.latest_error_payload, before.cycle_started_at)
    assert audit(nid) == [] and _manual_publishes(published_tasks) == []


def test_replay_to_nowhere_is_skipped(settings):
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/old")
    with session_scope() as session:
        from sqlalchemy import update

        from deliverer.models import Notification

        session.execute(update(Notification).where(Notification.id == nid)
                        .values(url=None, endpoint_id=None, sequence=None))
    result = replay(settings, ReplayFilter(shop.partner_id))
    assert (result.matched, result.replayed, result.skipped) == (1, 0, 1)
    assert h.notification(nid).status == NotificationStatus.FAILED


def test_operator_retry_obeys_the_status_rule_but_not_the_merchant_limits(settings, worker,
                                                                          receiver: Receiver):
    url = receiver.url("/hook")
    shop = h.new_partner(settings, url)
    nid = failed(shop.partner_id, url)
    pending = h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                    next_attempt_at=utcnow()
                                    + timedelta(hours=1))
    with session_scope() as session, pytest.raises(Conflict, match="not in FAILED status"):
        operator_retry(session, settings, pending)
    with session_scope() as session, pytest.raises(NotificationNotFound):
        operator_retry(session, settings, "not-a-uuid")
    # Far beyond the merchant's 3 retries and 10 a minute.
    for _ in range(12):
        h.wait_until(lambda: h.status_is(nid, NotificationStatus.FAILED, NotificationStatus.SENT))
        with session_scope() as session:
            from sqlalchemy import update

            from deliverer.models import Notification

            session.execute(update(Notification).where(Notification.id == nid)
                            .values(status=NotificationStatus.FAILED, next_attempt_at=None))
        with session_scope() as session:
            operator_retry(session, settings, nid)
    h.wait_until(lambda: h.sent(nid))
    assert audit(nid) == [("retry", OPERATOR, None)] * 12
    assert h.notification(nid).manual_retry_count == 0


def test_an_operator_retry_to_a_new_url_hands_the_old_queue_to_the_next(settings):
    """As for a merchant's retry: the head leaves for the fixed URL, the one held behind
    it on the old endpoint takes its place instead of staying held for good."""
    old = "http://127.0.0.1:9/old"
    shop = h.new_partner(settings, old)
    head, behind = head_and_held(shop.partner_id, old)
    set_webhook_url(shop.partner_id, "http://127.0.0.1:9/new")
    with session_scope() as session:
        operator_retry(session, settings, head)
    assert h.notification(head).url == "http://127.0.0.1:9/new"
    promoted = h.notification(behind)
    assert not promoted.held and promoted.next_attempt_at is not None
    assert promoted.url == old


def test_operator_ignore_reuses_the_partner_api_rule(settings, receiver: Receiver):
    url = receiver.url("/hook")
    shop = h.new_partner(settings, url)
    nid = failed(shop.partner_id, url)
    sent = h.insert_notification(shop.partner_id, url, next_attempt_at=None,
                                 status=NotificationStatus.SENT)
    with session_scope() as session:
        operator_ignore(session, nid)
    assert h.notification(nid).status == NotificationStatus.NOT_SENT
    assert audit(nid) == [("ignore", OPERATOR, None)]
    with session_scope() as session, pytest.raises(Conflict, match="already been delivered"):
        operator_ignore(session, sent)
    # The refusal is on record too, as the partner API records its own.
    assert audit(sent) == [("ignore", "CONFLICT", None)]


def test_a_replayed_not_sent_notification_goes_to_its_endpoints_url_now(settings):
    """A move repoints what an endpoint holds, not what was NOT_SENT: replayed with
    --include-not-sent, that went to the URL the endpoint had left (the review)."""
    old, new = "http://127.0.0.1:9/old", "http://127.0.0.1:9/new"
    shop = h.new_partner(settings, "http://127.0.0.1:9/default")
    with session_scope() as session:
        key = registered.create(session, settings, shop.partner_id, url=old).id
    ignored = failed(shop.partner_id, old, status=NotificationStatus.NOT_SENT)
    assert h.notification(ignored).endpoint_id == key
    with session_scope() as session:
        registered.update_endpoint(session, settings, session.get(Endpoint, key), url=new)
    result = replay(settings, ReplayFilter(shop.partner_id, include_not_sent=True))
    assert result.replayed == 1
    row = h.notification(ignored)
    assert (row.status, row.url, row.endpoint_id) == (NotificationStatus.PENDING, new, key)
