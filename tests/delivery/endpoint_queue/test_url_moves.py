"""An endpoint moved to a new URL: what it held drains there, and a POST to the old URL
still out at the move (its answer, a batch's later jobs, a late POST) never counts for the
new one."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy.exc import OperationalError

from deliverer.db import session_scope
from deliverer.delivery import batch, endpoint_queue, service
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sending import still_there
from deliverer.models import Endpoint, NotificationStatus, Trigger, utcnow
from deliverer.partners import registered
from tests.delivery.endpoint_queue.helpers import endpoint_at, move_endpoint, registered_endpoint
from tests.support import receiver as rx
from tests.support.helpers import deliver_when_due, insert_notification, new_partner, notification


def test_a_url_move_drains_what_the_endpoint_held(settings, receiver):
    """PATCH /endpoints/{id} with a new URL: the head succeeded there, which made no
    recovery (the move had reset the endpoint's health), so the held ones waited for the
    queue repair, a minute (a black-box try)."""
    old = receiver.always("/old", rx.status(500))
    partner = new_partner(settings, None)
    with session_scope() as session:
        endpoint = registered.create(session, settings, partner.partner_id, url=old)
        session.commit()
        key = endpoint.id
    ids = [insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow()) for _ in range(3)]
    for nid in ids:
        service.deliver(nid, settings)
    assert [notification(n).held for n in ids] == [False, True, True]
    new = receiver.always("/new", rx.ok())
    with session_scope() as session:
        endpoint = session.get(Endpoint, key)
        registered.update_endpoint(session, settings, endpoint, url=new)
        session.commit()
    assert endpoint_at(partner.partner_id, new).draining
    with session_scope() as session:
        assert endpoint_queue.drain(session, settings, utcnow()) == 2
        session.commit()
    for nid in ids:
        assert deliver_when_due(nid, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 3


def _moved_mid_post(settings, receiver, old_answer, count: int, deliver, **row):
    """A registered endpoint at /old (each POST held until the move, then ``old_answer``)
    with ``count`` due notifications (``row``: more of their columns); ``deliver(ids)``
    runs in a thread, and PATCH moves the endpoint to /new while its first POST is out.
    Returns the ids, the new URL and what ``deliver`` returned."""
    release = threading.Event()
    old = receiver.always("/old", rx.held(release, old_answer))
    new = receiver.always("/new", rx.ok())
    partner, key = registered_endpoint(settings, old)
    ids = [insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow(), **row) for _ in range(count)]
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(deliver, ids)
        receiver.wait_for(1, "/old")
        move_endpoint(settings, key, new)
        release.set()
        return ids, new, in_flight.result(timeout=30)


@pytest.mark.parametrize("answer", [500, 410])
def test_the_old_urls_answer_after_a_move_is_not_the_new_urls(settings, receiver, answer):
    """An attempt in flight to the old URL fails after PATCH moved the endpoint: the new
    URL, which has not failed, was marked failing (its other notifications held behind a
    ladder step, the console showing the old URL's error) or, for a 410, disabled."""
    (first, second), new, outcome = _moved_mid_post(
        settings, receiver, rx.status(answer), 2, lambda ids: service.deliver(ids[0], settings))
    assert outcome.status == NotificationStatus.FAILED
    endpoint = endpoint_at(notification(first).partner_id, new)
    assert (endpoint.failing_since, endpoint.consecutive_failures, endpoint.last_error,
            endpoint.disabled_at) == (None, 0, None, None)
    row = notification(first)
    assert (row.url, row.attempt_count, row.held) == (new, 1, False)
    assert row.next_attempt_at <= utcnow()  # tried at the new URL now, not a ladder step on
    assert service.deliver(second, settings).status == NotificationStatus.SENT
    assert service.deliver(first, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 2


def test_the_old_urls_failure_on_the_last_rung_still_tries_the_new_url(settings, receiver):
    """The cycle's 30 days ran out while the attempt to the old URL was out: its failure
    exhausted the notification, and the URL the merchant moved to never had a try (a
    webhook lost to a move). Due at once there, within the cycle (the claim exhausts
    one due past it)."""
    max_age = timedelta(seconds=settings.ladder.max_age * settings.time_scale)
    (first,), _new, outcome = _moved_mid_post(
        settings, receiver, rx.status(500), 1, lambda ids: service.deliver(ids[0], settings),
        cycle_started_at=utcnow() - max_age - timedelta(seconds=1), retry_attempts=12)
    assert outcome.status == NotificationStatus.FAILED
    row = notification(first)
    assert row.next_attempt_at is not None and row.next_attempt_at <= utcnow()
    assert service.deliver(first, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 1


def test_the_old_urls_failure_after_a_move_waits_for_the_new_urls_pause(settings, receiver):
    """The new URL answered 429 with Retry-After while the old URL's POST was out: that
    POST's failure is due at the new URL when the pause ends, not now, which a claim
    would hold for the pause."""
    release = threading.Event()
    old = receiver.always("/old", rx.held(release, rx.status(500)))
    new = receiver.always("/new", rx.retry_after("3600"))
    partner, key = registered_endpoint(settings, old)
    first = insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(service.deliver, first, settings)
        receiver.wait_for(1, "/old")
        move_endpoint(settings, key, new)
        newer = insert_notification(partner.partner_id, new,
                                    status=NotificationStatus.PENDING, next_attempt_at=utcnow())
        assert service.deliver(newer, settings).status == NotificationStatus.FAILED
        release.set()
        assert in_flight.result(timeout=30).status == NotificationStatus.FAILED
    paused_until = endpoint_at(partner.partner_id, new).retry_after_until
    assert paused_until is not None and paused_until > utcnow()
    assert notification(first).next_attempt_at == paused_until


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "in a batch"])
def test_the_old_urls_2xx_after_a_move_does_not_recover_the_new_url(settings, receiver,
                                                                    alone):
    """A POST to the old URL answers 2xx after PATCH moved the endpoint and the new URL
    failed: it cleared the new URL's failing state and released its queue (the
    counterpart of a failure there, above). The new URL stays failing, its head on the
    ladder."""
    release = threading.Event()
    old = receiver.always("/old", rx.held(release, rx.ok()))
    new = receiver.always("/new", rx.status(500))
    partner, key = registered_endpoint(settings, old)
    in_flight = insert_notification(partner.partner_id, old,
                                    status=NotificationStatus.PENDING, next_attempt_at=utcnow())
    with ThreadPoolExecutor(1) as pool:
        if alone:
            done = pool.submit(service.deliver, in_flight, settings)
        else:
            done = pool.submit(batch.deliver_many, [in_flight], settings)
        receiver.wait_for(1, "/old")
        move_endpoint(settings, key, new)
        head = insert_notification(partner.partner_id, new,
                                   status=NotificationStatus.PENDING, next_attempt_at=utcnow())
        assert service.deliver(head, settings).status == NotificationStatus.FAILED
        due = notification(head).next_attempt_at
        release.set()
        done.result(timeout=30)
    assert notification(in_flight).status == NotificationStatus.SENT
    endpoint = endpoint_at(partner.partner_id, new)
    assert endpoint.failing_since is not None and endpoint.consecutive_failures == 1
    assert notification(head).next_attempt_at == due


@pytest.mark.parametrize("new_answer", ["failing", "gone", "pausing"])
def test_the_old_urls_2xx_after_a_move_hands_the_queue_on(settings, receiver, new_answer):
    """The head, failing at the old URL, is out there again when PATCH moves the endpoint;
    a newer notification fails at the new URL and is held behind it; then the head's 2xx
    comes from the old URL. The new URL stays failing, and the held one takes the head's
    place at once (the new URL's probe): a first fix of the case above left the endpoint
    failing with no head, everything held for good (found by a review, reverted). Unless
    the new URL's 410 disabled the endpoint: then what it holds waits for its enabling;
    or its 429 asked for a pause: then the held one is due when the pause ends (due now,
    a claim held it again for the pause, and nothing probed the new URL)."""
    release = threading.Event()
    old = receiver.program("/old", [rx.status(500)], rx.held(release, rx.ok()))
    new = {"failing": lambda: receiver.fail_then_succeed("/new", 1),
           "gone": lambda: receiver.always("/new", rx.status(410)),
           "pausing": lambda: receiver.always("/new", rx.retry_after("3600"))}[new_answer]()
    partner, key = registered_endpoint(settings, old)
    head = insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
    assert service.deliver(head, settings).status == NotificationStatus.FAILED
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(deliver_when_due, head, settings)
        receiver.wait_for(2, "/old")
        move_endpoint(settings, key, new)
        newer = insert_notification(partner.partner_id, new,
                                    status=NotificationStatus.PENDING, next_attempt_at=utcnow())
        assert service.deliver(newer, settings).status == NotificationStatus.FAILED
        assert notification(newer).held  # behind the head, still out at the old URL
        release.set()
        assert in_flight.result(timeout=30).status == NotificationStatus.SENT
    assert endpoint_at(partner.partner_id, new).failing_since is not None
    if new_answer == "gone":
        assert endpoint_at(partner.partner_id, new).disabled_at is not None
        assert notification(newer).held
        return
    if new_answer == "pausing":
        paused_until = endpoint_at(partner.partner_id, new).retry_after_until
        promoted = notification(newer)
        assert not promoted.held and promoted.next_attempt_at == paused_until
        assert paused_until is not None and paused_until > utcnow()
        return
    promoted = notification(newer)
    assert not promoted.held and promoted.next_attempt_at <= utcnow()
    assert deliver_when_due(newer, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 2
    assert endpoint_at(partner.partner_id, new).failing_since is None


def test_a_batchs_jobs_after_a_move_are_not_sent_to_the_old_url(settings, receiver,
                                                                monkeypatch):
    """A batch's POSTs to one endpoint go a few at a time: those whose turn came after
    PATCH moved the endpoint went to the URL the merchant had left (for up to 26 s in a
    black-box try; the old URL's 2xx recorded them SENT, and the new URL never got
    them). Handed back unsent, they go to the new URL."""
    monkeypatch.setattr(still_there, "CHECK_AFTER", 0.0)  # every turn checked
    monkeypatch.setattr(still_there, "READ_EVERY", 0.0)
    s = settings.with_overrides(endpoint_concurrency=1)  # one run: one POST at a time
    _ids, new, outcome = _moved_mid_post(settings, receiver, rx.ok(), 3,
                                         lambda ids: batch.deliver_many(ids, s))
    assert (outcome.sent, len(outcome.unsent)) == (1, 2)
    assert len(receiver.requests("/old")) == 1
    handed_back = [nid for nid, _lane in outcome.unsent]
    for nid in handed_back:
        row = notification(nid)
        assert (row.status, row.url, row.lease_token, row.attempt_count) == (
            NotificationStatus.PENDING, new, None, 0)
    assert batch.deliver_many(handed_back, s).sent == 2
    assert len(receiver.requests("/new")) == 2


def test_a_late_post_is_checked_against_its_endpoints_url_at_the_claim(settings,
                                                                       monkeypatch):
    """``still_there`` compares the endpoint's URL now with its URL at the claim, not
    with the row's: a row left at a URL its endpoint had left (it was NOT_SENT at the
    move) was handed back at every late turn (the review). A read that fails lets the
    POST go as claimed: raised, it left the batch's answered POSTs unrecorded."""
    monkeypatch.setattr(still_there, "READ_EVERY", 0.0)
    partner = new_partner(settings, None)
    with session_scope() as session:
        endpoint = registered.create(session, settings, partner.partner_id,
                                     url="http://127.0.0.1:9/now")
        key = endpoint.id
    job = DeliveryJob(notification_id="n", lease_token="t", url="http://127.0.0.1:9/left",
                      body=b"{}", secrets=[], trigger=Trigger.AUTOMATIC, endpoint_id=key,
                      endpoint_failing=False, endpoint_url="http://127.0.0.1:9/now")
    late = still_there.StillThere(time.monotonic() - 2 * still_there.CHECK_AFTER, [job])
    assert late(job)  # its endpoint has not moved since the claim
    with session_scope() as session:
        registered.update_endpoint(session, settings, session.get(Endpoint, key),
                                   url="http://127.0.0.1:9/later")
    assert not late(job)
    assert still_there.StillThere(time.monotonic(), [job])(job)  # its turn came at once

    def unreadable(endpoint_id: int, batch: object) -> str | None:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(still_there.ENDPOINTS, "url", unreadable)
    assert late(job)
