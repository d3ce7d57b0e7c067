"""The deliver task's database steps are shared with the messages running beside it.

A burst of single publishes is one ``deliverer.deliver`` message per notification; the
claims of the tasks running at the same moment are taken in one transaction and their
outcomes recorded in one (``deliverer.delivery.together``), while each POST stays in its
task's thread, so a slow endpoint holds no other endpoint's delivery.
"""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.delivery import together
from deliverer.delivery.claim import ClaimState
from deliverer.models import Attempt, Notification, NotificationStatus, utcnow
from tests.support import helpers as h
from tests.support.race import race
from tests.support.receiver import ok, sleep


def _run_at_once(ids: list[str], settings) -> dict[str, together.AttemptOutcome]:
    """One thread per id, released together, as the threads pool runs the tasks."""
    outcomes = race([lambda nid=nid: together.deliver(nid, settings) for nid in ids],
                    timeout=30)
    return dict(zip(ids, outcomes, strict=True))


def _batch_sizes(monkeypatch) -> tuple[list[int], list[int]]:
    claims: list[int] = []
    records: list[int] = []
    claim_run, record_run = together._CLAIMS._run, together._RECORDS._run

    def counting_claims(ids):  # type: ignore[no-untyped-def]
        claims.append(len(ids))
        return claim_run(ids)

    def counting_records(done):  # type: ignore[no-untyped-def]
        records.append(len(done))
        return record_run(done)

    monkeypatch.setattr(together._CLAIMS, "_run", counting_claims)
    monkeypatch.setattr(together._RECORDS, "_run", counting_records)
    return claims, records


def test_tasks_running_at_once_share_their_claims_and_records(settings, receiver,
                                                             monkeypatch):
    receiver.always("/together", sleep(0.05, ok()))  # POSTs overlap
    url = receiver.url("/together")
    shop = h.new_partner(settings, url)
    ids = [h.insert_notification(shop.partner_id, url, next_attempt_at=utcnow(),
                                 status=NotificationStatus.PENDING) for _ in range(24)]
    claims, records = _batch_sizes(monkeypatch)

    outcomes = _run_at_once(ids, settings)

    assert {nid: o.status for nid, o in outcomes.items()} == {
        nid: NotificationStatus.SENT for nid in ids}
    assert sum(claims) == len(ids) and max(claims) > 1, claims  # claims were shared
    assert sum(records) == len(ids) and max(records) > 1, records  # so were records
    posts = [r.headers["webhook-id"] for r in receiver.requests("/together")]
    assert sorted(posts) == sorted(ids)  # one POST each
    with session_scope() as session:
        attempts = session.scalars(select(Attempt.notification_id)
                                   .where(Attempt.notification_id.in_(ids))).all()
        rows = session.execute(select(Notification.status, Notification.attempt_count)
                               .where(Notification.id.in_(ids))).all()
    assert sorted(attempts) == sorted(ids)  # one attempt recorded each
    assert len(rows) == len(ids)
    assert all(r.status == NotificationStatus.SENT and r.attempt_count == 1 for r in rows)


def test_a_slow_endpoint_holds_no_other_endpoints_delivery(settings, receiver):
    receiver.always("/slow", sleep(1.5, ok()))
    fast_url, slow_url = receiver.url("/fast"), receiver.url("/slow")
    shop = h.new_partner(settings, fast_url)
    slow = [h.insert_notification(shop.partner_id, slow_url, next_attempt_at=utcnow(),
                                  status=NotificationStatus.PENDING) for _ in range(2)]
    fast = [h.insert_notification(shop.partner_id, fast_url, next_attempt_at=utcnow(),
                                  status=NotificationStatus.PENDING) for _ in range(6)]
    done_at: dict[str, float] = {}
    started = time.monotonic()

    def task(nid: str) -> None:
        together.deliver(nid, settings)
        done_at[nid] = time.monotonic() - started

    race([lambda nid=nid: task(nid) for nid in slow + fast], timeout=30)
    assert all(done_at[nid] >= 1.5 for nid in slow)
    assert max(done_at[nid] for nid in fast) < 1.0, done_at  # recorded before the slow end


def test_a_message_alone_runs_at_once_and_says_what_became_of_it(settings, receiver):
    url = receiver.fail_then_succeed("/alone", 1)
    shop = h.new_partner(settings, url)
    failing = h.insert_notification(shop.partner_id, url, next_attempt_at=utcnow(),
                                    status=NotificationStatus.PENDING)
    elsewhere = receiver.url("/elsewhere")  # its own endpoint: not held behind the other
    later = h.insert_notification(shop.partner_id, elsewhere,
                                  next_attempt_at=utcnow() + timedelta(hours=1),
                                  status=NotificationStatus.FAILED)
    failed = together.deliver(failing, settings)
    assert failed.status == NotificationStatus.FAILED
    assert failed.next_attempt is not None  # the ladder's first step is within the horizon
    assert together.deliver(later, settings).state == ClaimState.NOT_DUE
    assert together.deliver(failing, settings).state == ClaimState.NOT_DUE
    missing = together.deliver("00000000-0000-0000-0000-000000000000", settings)
    assert missing.state == ClaimState.FINAL
    assert len(receiver.requests("/alone")) == 1
