"""Manual retries decided in batches (deliverer.notifications.manual_retry), called
directly on the real database: one batch judges each request against the ones before it
and by its own key, the rate limit counts the batch itself and each partner alone, and
locked rows are decided alone after, whatever commits in between."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliverer.db import get_database, session_scope
from deliverer.delivery import service
from deliverer.errors import (
    Conflict,
    DelivererError,
    NotificationNotFound,
    TooManyRequests,
    Unauthorized,
)
from deliverer.models import Lane, Notification, NotificationStatus, PartnerRequest, utcnow
from deliverer.notifications.cycle import MAX_MANUAL, NOT_FAILED
from deliverer.notifications.manual_retry import Retried, RetryRequest, manual_retries, run_batch
from deliverer.partners import keys
from deliverer.partners.service import rotate_key
from tests.notifications.manual_retry.helpers import URL, decide
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.rows import failed, partner_requests
from tests.support.waiting import waiting_on_a_lock


def test_one_batch_judges_each_request_against_the_ones_before_it(settings, enqueued):
    shop, other = h.new_partner(settings, URL, "Shop"), h.new_partner(settings, URL, "Other")
    me = h.principal(shop)
    retryable = failed(shop.partner_id, URL)
    exhausted = failed(shop.partner_id, URL)
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == exhausted)
                        .values(manual_retry_count=3))
    pending = h.insert_notification(shop.partner_id, URL, status=NotificationStatus.PENDING,
                                    next_attempt_at=None)
    someone_elses = failed(other.partner_id, URL)
    unknown = str(uuid.uuid4())

    asked = [retryable, retryable, exhausted, pending, someone_elses, "not-an-id", unknown]
    outcomes = decide(settings, [RetryRequest(me, nid) for nid in asked])

    first = outcomes[0]
    assert isinstance(first, dict)
    assert (first["id"], first["status"], first["manual_retry_count"]) == (
        retryable, NotificationStatus.PENDING, 1)
    assert first["retry_attempts"] == 0 and first["latest_error_payload"] is None
    assert first["type"] == "transaction.updated"
    errors = outcomes[1:]
    assert [type(e) for e in errors] == [Conflict, Conflict, Conflict, NotificationNotFound,
                                         NotificationNotFound, NotificationNotFound]
    assert [e.message for e in errors[:3]] == [NOT_FAILED, MAX_MANUAL.format(n=3), NOT_FAILED]

    row = h.notification(retryable)
    assert (row.status, row.manual_retry_count, row.retry_attempts) == (
        NotificationStatus.PENDING, 1, 0)
    assert row.latest_error_payload is None and row.scheduled_for is not None
    assert h.notification(exhausted).manual_retry_count == 3
    assert h.notification(someone_elses).status == NotificationStatus.FAILED
    # Every decision is on record, in the order asked, with the notification where it
    # is a well-formed id.
    assert [(r.outcome, r.notification_id) for r in partner_requests(shop.partner_id)] == [
        ("ACCEPTED", retryable), ("CONFLICT", retryable), ("CONFLICT", exhausted),
        ("CONFLICT", pending), ("NOT_FOUND", someone_elses), ("NOT_FOUND", None),
        ("NOT_FOUND", unknown)]
    assert partner_requests(other.partner_id) == []
    assert enqueued == [([retryable], Lane.MANUAL)]


def test_the_rate_limit_counts_the_batch_itself_and_each_partner_alone(settings, enqueued):
    busy, calm = h.new_partner(settings, URL, "Busy"), h.new_partner(settings, URL, "Calm")
    busy_ids = [failed(busy.partner_id, URL) for _ in range(15)]
    calm_ids = [failed(calm.partner_id, URL) for _ in range(2)]
    # Three accepted a moment ago, in an earlier batch.
    assert all(isinstance(o, dict) for o in decide(
        settings, [RetryRequest(h.principal(busy), nid) for nid in busy_ids[:3]]))
    enqueued.clear()

    requests = [RetryRequest(h.principal(busy), nid) for nid in busy_ids[3:]]
    requests.insert(4, RetryRequest(h.principal(calm), calm_ids[0]))
    requests.append(RetryRequest(h.principal(calm), calm_ids[1]))
    outcomes = decide(settings, requests)

    by_partner: dict[str, Counter[str]] = {}
    for request, outcome in zip(requests, outcomes, strict=True):
        kind = "ok" if isinstance(outcome, dict) else type(outcome).__name__
        by_partner.setdefault(request.principal.partner_id, Counter())[kind] += 1
    assert by_partner[busy.partner_id] == Counter(ok=7, TooManyRequests=5)
    assert by_partner[calm.partner_id] == Counter(ok=2)
    limited = [o for o in outcomes if isinstance(o, TooManyRequests)]
    assert all(1 <= int(o.headers["Retry-After"]) <= 60 for o in limited)
    accepted = [o["id"] for o in outcomes if isinstance(o, dict)]
    # The first seven of the busy partner's, in order, and the calm partner's two.
    assert accepted[:4] == busy_ids[3:7] and calm_ids[0] in accepted
    # One message for the whole batch.
    [(ids, lane)] = enqueued
    assert lane == Lane.MANUAL and sorted(ids) == sorted(accepted)
    rows = partner_requests(busy.partner_id)
    assert Counter(r.outcome for r in rows) == Counter(ACCEPTED=10, TOO_MANY_REQUESTS=5)


def test_a_window_that_has_moved_on_allows_retries_again(settings):
    shop = h.new_partner(settings, URL)
    ids = [failed(shop.partner_id, URL) for _ in range(11)]
    me = h.principal(shop)
    assert all(isinstance(o, dict) for o in decide(
        settings, [RetryRequest(me, nid) for nid in ids[:10]]))
    [refused] = decide(settings, [RetryRequest(me, ids[10])])
    assert isinstance(refused, TooManyRequests)
    with session_scope() as session:
        session.execute(update(PartnerRequest).values(
            created_at=utcnow() - timedelta(minutes=2)))
    [allowed] = decide(settings, [RetryRequest(me, ids[10])])
    assert isinstance(allowed, dict)


@pytest.mark.parametrize("through", ["manual_retries", "run_batch"])
def test_a_batch_that_waited_for_its_partner_counts_the_retries_the_holder_committed(
        settings, through):
    """The counts are read in the statement after the partners' lock, whose snapshot
    sees what the lock's previous holder committed: read any earlier, a batch that
    waited behind another batch of the same partner would miss that batch's retries.
    ``run_batch`` takes the lock in its key lookup, ``manual_retries`` alone in a
    statement of its own."""
    if settings.is_sqlite:
        pytest.skip("row locks are PostgreSQL's; SQLite serialises write transactions")
    shop = h.new_partner(settings, URL)
    ids = [failed(shop.partner_id, URL) for _ in range(11)]
    me = h.principal(shop)
    holder = get_database().sessionmaker()
    try:
        # The partner's tenth retry of the minute, held uncommitted with its lock.
        assert all(isinstance(o, dict) for o in manual_retries(
            holder, settings, [RetryRequest(me, nid) for nid in ids[:10]]))
        result: list[Sequence[Retried | DelivererError]] = []
        waiter = threading.Thread(target=lambda: result.append(
            decide(settings, [RetryRequest(me, ids[10])]) if through == "manual_retries"
            else run_batch(settings, [(keys.hash_key(shop.api_key), ids[10])])))
        waiter.start()
        with get_database().engine.connect() as look:
            h.wait_until(lambda: waiting_on_a_lock(look),
                         message="the second batch waiting for the partner's lock")
        holder.commit()
    finally:
        holder.close()
    waiter.join(10)
    [[outcome]] = result
    assert isinstance(outcome, TooManyRequests)
    assert h.notification(ids[10]).status == NotificationStatus.FAILED


def test_a_batch_authenticates_each_request_by_its_key(settings):
    shop = h.new_partner(settings, URL)
    nid = failed(shop.partner_id, URL)
    other = failed(shop.partner_id, URL)
    old_key = shop.api_key
    with session_scope() as session:
        new_key = rotate_key(session, shop.partner_id)
    never_issued = keys.hash_key(keys.generate_key())

    outcomes = run_batch(settings, [(keys.hash_key(old_key), nid),
                                    (keys.hash_key(new_key), nid),
                                    (never_issued, other)])

    assert isinstance(outcomes[0], Unauthorized)
    assert isinstance(outcomes[1], dict) and outcomes[1]["id"] == nid
    assert isinstance(outcomes[2], Unauthorized)
    # Only the authenticated request is on the partner's record.
    assert [r.outcome for r in partner_requests(shop.partner_id)] == ["ACCEPTED"]
    assert h.notification(other).status == NotificationStatus.FAILED


def test_a_batch_skips_a_locked_notification_and_decides_it_alone_after(settings):
    """A worker recording an attempt holds its notification's row (and may update others
    of its endpoint): a batch of several notifications must not wait for it while
    holding the others, or the two deadlock. It decides the free ones, commits, then
    waits for the locked one alone."""
    if settings.is_sqlite:
        pytest.skip("row locks are PostgreSQL's; SQLite serialises write transactions")
    shop = h.new_partner(settings, URL)
    free, locked = failed(shop.partner_id, URL), failed(shop.partner_id, URL)
    key = keys.hash_key(shop.api_key)
    holder = get_database().engine.connect()
    holder.execute(select(Notification.id).where(Notification.id == locked)
                   .with_for_update())
    result: list[list[Retried | DelivererError]] = []
    batch = threading.Thread(target=lambda: result.append(
        run_batch(settings, [(key, locked), (key, free)])))
    batch.start()
    try:
        # The free one is decided and committed while the other's row is still held.
        h.wait_until(lambda: [r.notification_id
                              for r in partner_requests(shop.partner_id)] == [free],
                     message="the free notification decided while the other is locked")
        assert h.notification(free).status == NotificationStatus.PENDING
        assert h.notification(locked).status == NotificationStatus.FAILED
        assert batch.is_alive()
    finally:
        holder.rollback()
        holder.close()
    batch.join(10)
    [outcomes] = result
    assert [o["id"] for o in outcomes if isinstance(o, dict)] == [locked, free]
    assert [(r.notification_id, r.outcome) for r in partner_requests(shop.partner_id)] == [
        (free, "ACCEPTED"), (locked, "ACCEPTED")]


def test_a_held_notification_retried_while_a_later_one_fails_stays_a_manual_retry(
        settings, receiver):
    """The merchant retries a held notification while an attempt of a later one fails:
    the failure, which had read it held, released it to the ladder in the later one's
    place, over the accepted retry (PENDING, two minutes away; a flaky test's race)."""
    if settings.is_sqlite:
        pytest.skip("row locks are PostgreSQL's; SQLite serialises write transactions")
    url = receiver.always("/down", rx.status(500))
    shop = h.new_partner(settings, url)
    held = failed(shop.partner_id, url, held=True)
    later = h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                  next_attempt_at=utcnow())
    watcher = get_database().engine.connect()
    pool = ThreadPoolExecutor(1)
    try:
        with session_scope() as session:  # the retry, accepted, not yet committed
            [outcome] = manual_retries(session, settings, [RetryRequest(h.principal(shop), held)])
            assert isinstance(outcome, dict)
            before_failure = utcnow()
            failing = pool.submit(service.deliver, later, settings)
            h.wait_until(lambda: waiting_on_a_lock(watcher),
                         message="the failure's queue step waits for the held row")
        assert failing.result(timeout=30).status == NotificationStatus.FAILED
    finally:
        pool.shutdown()
        watcher.close()
    retried = h.notification(held)
    assert (retried.status, retried.lane, retried.held) == (
        NotificationStatus.PENDING, Lane.MANUAL, False)
    assert retried.next_attempt_at <= utcnow()
    head = h.notification(later)  # no earlier one held: it heads the queue
    # On the ladder after its failure (its first rung is 120 ms away at the tests' time
    # scale: compared with now, a loaded machine failed it).
    assert not head.held and head.next_attempt_at > before_failure
