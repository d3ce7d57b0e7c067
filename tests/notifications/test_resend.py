"""Resend requests as an outbox (deliverer.notifications.resend and the beat sweep): a
resend the API accepted is sent, even when its message was lost (the broker down at the
request's commit), its worker died after taking it, or the database failed while the
worker recorded its POST."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from deliverer.celery_app import make_celery
from deliverer.db import session_scope
from deliverer.models import NotificationStatus, PartnerRequest, ResendStatus, Trigger, utcnow
from deliverer.notifications.resend import request_resend, resend_lease
from deliverer.partners.service import NewPartner
from deliverer.scheduling.sweep import (
    LOST_RESEND_MAX_AGE,
    collect_lost_resends,
    expire_old_resends,
)
from deliverer.scheduling.tasks import sweep_due
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.celery_app import current_celery_app
from tests.support.db_faults import failing_inserts
from tests.support.rows import partner_requests

UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"
PENDING, SENDING, EXPIRED = ResendStatus.PENDING, ResendStatus.SENDING, ResendStatus.EXPIRED


def ask_resend(settings, partner: NewPartner, reference: str) -> int:
    with session_scope() as session:
        return request_resend(session, settings, h.principal(partner), reference).request_id


def request_row(request_id: int) -> PartnerRequest:
    [row] = partner_requests(id=request_id)
    return row


def resend_posts(receiver, nid: str) -> list:
    return [r for r in receiver.requests("/hook") if r.headers["webhook-id"] == nid][1:]


@pytest.fixture
def sent(settings, receiver, worker):
    """A partner and a notification of reference TXN-1, delivered once."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-1")
    receiver.wait_for(1, "/hook")
    return partner, nid


def test_a_resend_whose_message_could_not_be_sent_goes_at_the_next_sweep(
        settings, celery_app, receiver, sent, override_settings, caplog):
    """The broker down at the request's commit: left to the next sweep, as a retry's
    notification is, with one WARNING line. It waited the lost-message grace (two
    minutes) and logged a traceback (the RabbitMQ try)."""
    partner, nid = sent
    with override_settings(lost_message_grace=3600.0) as s:
        down = make_celery(s.with_overrides(broker_url=UNREACHABLE_BROKER))
        try:
            with current_celery_app(down), caplog.at_level(logging.WARNING, "deliverer"):
                request_id = ask_resend(s, partner, "TXN-1")  # accepted, no message
        finally:
            celery_app.set_current()
            celery_app.set_default()
        assert request_row(request_id).delivery_status == PENDING
        assert [r.levelname for r in caplog.records
                if "resend request" in r.getMessage()] == ["WARNING"]
        assert not any(r.exc_info for r in caplog.records)
        sweep_due()  # one sweep, an hour's grace notwithstanding
        h.wait_until(lambda: request_row(request_id).delivery_status == NotificationStatus.SENT,
                     interval=0.1, message="resend SENT after one sweep")
    [again] = resend_posts(receiver, nid)
    assert again.body == receiver.requests("/hook")[0].body
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]


def test_recording_the_resend_survives_a_database_error(settings, receiver, sent):
    """The POST was made: a failed INSERT of its attempt is run again, not left SENDING."""
    partner, nid = sent
    with failing_inserts("attempts", nid, Trigger.RESEND) as injected:
        request_id = ask_resend(settings, partner, "TXN-1")
        h.wait_until(lambda: request_row(request_id).delivery_status == NotificationStatus.SENT,
                     message="resend SENT")
    assert injected == [1]
    assert len(resend_posts(receiver, nid)) == 1
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]


def test_a_resend_whose_worker_died_is_sent_again_after_its_lease(
        settings, receiver, sent, override_settings):
    """The worker took the request (SENDING), POSTed, and never recorded it (the database
    gone for longer than it retries): once the lease has run out the sweep makes it
    PENDING again and it is sent again (at least once, as deliveries)."""
    partner, nid = sent
    with override_settings(lease_seconds=0.3, total_timeout=1.0) as s:
        lease = resend_lease(s).total_seconds()
        with failing_inserts("attempts", nid, Trigger.RESEND, times=None), \
                h.task_runs(name="deliverer.resend") as runs:
            request_id = ask_resend(s, partner, "TXN-1")
            h.wait_until(lambda: runs, message="the resend task's end")
        assert runs == ["FAILURE"]
        row = request_row(request_id)
        assert row.delivery_status == SENDING
        expires = row.lease_expires_at
        assert expires is not None
        [lost] = resend_posts(receiver, nid)

        h.wait_until(lambda: request_row(request_id).delivery_status == NotificationStatus.SENT,
                     on_poll=sweep_due, interval=0.1, timeout=lease + 10,
                     message="resend SENT again")
    first, second = resend_posts(receiver, nid)
    assert first.at == lost.at
    # Not while the worker might be alive: the lease runs from the claim, which comes
    # before the first POST by however long a loaded machine takes, so it is the bound.
    assert second.received_at >= expires
    assert request_row(request_id).enqueued_at >= expires  # the sweep's hand-over
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]
    assert request_row(request_id).lease_expires_at is None


def test_the_sweep_leaves_a_resend_alone_while_its_worker_may_still_record_it(
        settings, receiver, sent, override_settings):
    """A POST that takes its whole deadline, then a record through a database that times
    out on every try: the worker holds the request until its record window has closed and
    that window's last try has ended. Before, the lease (lease_seconds + total_timeout)
    ran out first: the sweep handed the request to another worker while this one was
    still recording (and counted no connect timeout either)."""
    partner, nid = sent
    receiver.program("/hook", [rx.sleep(3.0)])  # the POST ends at its deadline
    with override_settings(lease_seconds=1.3, connect_timeout=0.2, total_timeout=1.0) as s:
        handed_over: list[int] = []
        with failing_inserts("attempts", nid, Trigger.RESEND, times=None, delay=0.5), \
                h.task_runs(name="deliverer.resend") as runs:
            request_id = ask_resend(s, partner, "TXN-1")

            def worker_done_or_handed_over() -> bool:
                if runs:
                    return True
                handed_over.extend(collect(s, utcnow()))  # the sweep, as beat runs it
                return bool(handed_over)

            h.wait_until(worker_done_or_handed_over, interval=0.02,
                         message="the resend task's end")
        assert handed_over == []
        assert runs == ["FAILURE"]
        row = request_row(request_id)
        assert row.delivery_status == SENDING
        assert row.lease_expires_at > utcnow()
        assert len(resend_posts(receiver, nid)) == 1


# --------------------------------------------------------------------------- the sweep


def insert_request(partner_id: str, status: str | None, created_at, *, kind: str = "resend",
                   enqueued_at=None, lease_expires_at=None) -> int:
    with session_scope() as session:
        row = PartnerRequest(partner_id=partner_id, api_key_id=None, kind=kind,
                             notification_id=None, reference="TXN", outcome="ACCEPTED",
                             delivery_status=status, created_at=created_at,
                             enqueued_at=enqueued_at, lease_expires_at=lease_expires_at)
        session.add(row)
        session.flush()
        return row.id


def collect(settings, now, limit=None) -> list[int]:
    with session_scope() as session:
        return collect_lost_resends(session, settings, now=now, limit=limit)


def test_the_sweep_hands_over_exactly_the_lost_resends(settings, receiver):
    partner = h.new_partner(settings, receiver.url("/hook"))
    pid = partner.partner_id
    now = utcnow()
    sec = timedelta(seconds=1)
    grace = timedelta(seconds=settings.lost_message_grace)
    lease = resend_lease(settings)
    max_age = LOST_RESEND_MAX_AGE
    lost = {
        "pending_past_grace": insert_request(pid, PENDING, now - grace - sec),
        "sending_past_lease": insert_request(pid, SENDING, now - lease - 2 * sec,
                                             lease_expires_at=now - sec),
        # Taken by a worker before leases were recorded.
        "sending_without_lease": insert_request(pid, SENDING, now - lease - sec),
        "pending_almost_too_old": insert_request(pid, PENDING, now - max_age + 20 * sec),
    }
    kept = {
        "pending_fresh": insert_request(pid, PENDING, now - sec),
        "pending_enqueued_again_lately": insert_request(pid, PENDING, now - 10 * grace,
                                                        enqueued_at=now - sec),
        "sending_leased": insert_request(pid, SENDING, now - 10 * grace,
                                         lease_expires_at=now + sec),
        "sending_without_lease_lately": insert_request(pid, SENDING, now - sec),
        "sent": insert_request(pid, NotificationStatus.SENT, now - 10 * grace),
        "failed": insert_request(pid, NotificationStatus.FAILED, now - 10 * grace),
        "a_retry": insert_request(pid, None, now - 10 * grace, kind="retry"),
        # Older than the recovery's bound: left PENDING or SENDING before migration 0004,
        # and most of them POSTed long ago; not sent again on deploy.
        "pending_too_old": insert_request(pid, PENDING, now - max_age - sec),
        "sending_too_old": insert_request(pid, SENDING, now - max_age - sec,
                                          lease_expires_at=now - max_age + lease),
        "sending_too_old_without_lease": insert_request(pid, SENDING, now - 2 * max_age),
    }

    assert sorted(collect(settings, now)) == sorted(lost.values())
    for request_id in lost.values():
        row = request_row(request_id)
        assert (row.delivery_status, row.enqueued_at, row.lease_expires_at) == (
            PENDING, now, None)
    for name, request_id in kept.items():
        assert request_row(request_id).enqueued_at in (None, now - sec), name

    # Just handed over: not again before another grace has gone by.
    assert collect(settings, now + sec / 2) == []
    # Later still: the ones handed over are still PENDING (their messages lost again), and
    # the fresh ones have aged past the grace, the lease run out.
    later = now + grace + sec
    assert later - lease < now - sec  # the SENDING one without lease is still too young
    assert sorted(collect(settings, later)) == sorted(
        [*lost.values(), kept["pending_fresh"], kept["pending_enqueued_again_lately"],
         kept["sending_leased"]])


def test_the_sweep_expires_the_resends_it_no_longer_recovers(settings, receiver):
    partner = h.new_partner(settings, receiver.url("/hook"))
    pid = partner.partner_id
    now = utcnow()
    sec = timedelta(seconds=1)
    grace = timedelta(seconds=settings.lost_message_grace)
    too_old = now - LOST_RESEND_MAX_AGE - sec
    expired = [
        insert_request(pid, PENDING, too_old),
        insert_request(pid, PENDING, too_old, enqueued_at=now - grace - sec),
        insert_request(pid, SENDING, too_old, lease_expires_at=now - sec),
        insert_request(pid, SENDING, now - 2 * LOST_RESEND_MAX_AGE),  # no lease recorded
    ]
    kept = {
        # Handed over again just before the bound: its message may be taken any moment.
        "pending_enqueued_again_lately": (
            insert_request(pid, PENDING, too_old, enqueued_at=now - sec), PENDING),
        # Handed over just before the bound: its worker is POSTing it now.
        "sending_leased": (insert_request(pid, SENDING, too_old, lease_expires_at=now + sec),
                           SENDING),
        "pending_within_a_day": (insert_request(pid, PENDING, now - LOST_RESEND_MAX_AGE + sec),
                                 PENDING),
        "sent": (insert_request(pid, NotificationStatus.SENT, too_old),
                 NotificationStatus.SENT),
        "failed": (insert_request(pid, NotificationStatus.FAILED, too_old),
                   NotificationStatus.FAILED),
        "a_retry": (insert_request(pid, None, too_old, kind="retry"), None),
    }
    with session_scope() as session:
        assert expire_old_resends(session, settings, now=now, limit=3) == 3  # bounded, by id
    assert [request_row(i).delivery_status for i in expired] == [EXPIRED] * 3 + [SENDING]
    with session_scope() as session:
        assert expire_old_resends(session, settings, now=now) == 1
        assert expire_old_resends(session, settings, now=now) == 0
    for request_id in expired:
        row = request_row(request_id)
        assert (row.delivery_status, row.lease_expires_at) == (EXPIRED, None)
    for name, (request_id, status) in kept.items():
        assert request_row(request_id).delivery_status == status, name


def test_beats_sweep_expires_a_day_old_resend_and_sends_nothing(settings, receiver,
                                                                published_tasks, caplog):
    partner = h.new_partner(settings, receiver.url("/hook"))
    stale = insert_request(partner.partner_id, PENDING,
                           utcnow() - LOST_RESEND_MAX_AGE - timedelta(minutes=1))
    caplog.set_level(logging.WARNING, logger="deliverer.scheduling.tasks")
    sweep_due()
    assert request_row(stale).delivery_status == EXPIRED
    assert any("marked EXPIRED" in r.getMessage() for r in caplog.records)
    assert [t for t in published_tasks if t["task"] == "deliverer.resend"] == []


def test_the_sweep_hands_over_a_bounded_number_oldest_first(settings, receiver):
    partner = h.new_partner(settings, receiver.url("/hook"))
    now = utcnow()
    old = now - timedelta(seconds=settings.lost_message_grace + 1)
    ids = [insert_request(partner.partner_id, PENDING, old) for _ in range(5)]
    assert collect(settings, now, limit=2) == ids[:2]
    assert collect(settings, now, limit=2) == ids[2:4]
    assert collect(settings, now, limit=2) == ids[4:]
