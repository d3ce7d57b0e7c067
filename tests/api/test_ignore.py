"""POST /webhook-notifications/{id}/ignore (seed 003 "Ignore notification")."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from deliverer.db import session_scope
from deliverer.models import NotificationStatus, Trigger, utcnow
from deliverer.notifications.cycle import ALREADY_SENT
from deliverer.notifications.ignore import BEING_SENT
from deliverer.scheduling.sweep import collect_due
from deliverer.scheduling.tasks import sweep_due
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.receiver import held, sleep, status
from tests.support.rows import partner_requests

IGNORE = "/api/partner/v2/webhook-notifications/{}/ignore"
RETRY = "/api/partner/v2/webhook-notifications/{}/retry"

pytestmark = pytest.mark.usefixtures("worker")


def due_ids(settings, days_ahead: float = 31) -> set[str]:
    """What the beat sweep would enqueue, looking far past the 30-day cycle."""
    with session_scope() as session:
        due = collect_due(session, settings.with_overrides(sweep_horizon=days_ahead * 86400),
                          now=utcnow())
        session.rollback()  # look, don't mark
    return {d.notification_id for d in due}


def test_ignore_failed_takes_it_out_of_the_retry_queue_for_good(make_partner, receiver,
                                                                settings):
    receiver.always("/hook", status(500))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    # Still climbing the (time-scaled) ladder: the sweep would pick it up.
    h.wait_until(lambda: h.notification(nid).next_attempt_at is not None
                 or h.notification(nid).lease_token is not None, message="on the ladder")

    response = partner.api.post(IGNORE.format(nid))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == nid
    assert body["status"] == "NOT_SENT"
    assert body["nextAttemptAt"] is None

    # Let an attempt that was in flight land; from then on nothing moves.
    h.wait_until(lambda: h.notification(nid).lease_token is None, message="no lease")
    attempts = len(h.attempts(nid))
    assert nid not in due_ids(settings)
    row = h.notification(nid)
    assert row.status == NotificationStatus.NOT_SENT
    assert row.next_attempt_at is None
    # Beyond the first ladder steps (120, 300, 600 ms scaled), still no new attempt.
    h.wait_until(lambda: utcnow() - row.updated_at > timedelta(seconds=1.2), timeout=3,
                 message="ladder time passing")
    assert len(h.attempts(nid)) == attempts
    assert h.notification(nid).status == NotificationStatus.NOT_SENT

    t.assert_error(partner.api.post(RETRY.format(nid)), 409, "CONFLICT", t.NOT_FAILED)
    detail = partner.api.get(f"/api/partner/v2/webhook-notifications/{nid}").json()
    assert detail["status"] == "NOT_SENT"
    [row] = t.accepted(partner.partner_id, kind="ignore")
    assert row.notification_id == nid


def test_ignore_waits_for_an_attempt_in_flight(make_partner, receiver, slow_ladder):
    # The manual attempt is answered slowly, with a success: ignored meanwhile, the
    # notification would say NOT_SENT of a webhook the receiver acknowledged.
    receiver.program("/hook", [status(500), sleep(1.0, status(200))])
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    assert partner.api.post(RETRY.format(nid)).status_code == 200
    receiver.wait_for(2, "/hook")  # the manual attempt is being answered (slowly)
    t.assert_error(partner.api.post(IGNORE.format(nid)), 409, "CONFLICT", BEING_SENT)
    h.wait_until(lambda: h.notification(nid).status == NotificationStatus.SENT,
                 message="the in-flight attempt recorded")
    t.assert_error(partner.api.post(IGNORE.format(nid)), 409, "CONFLICT", ALREADY_SENT)
    assert [a.trigger for a in h.attempts(nid)] == [Trigger.AUTOMATIC, Trigger.MANUAL]
    assert [r.outcome for r in partner_requests(partner.partner_id)
            if r.kind == "ignore"] == ["CONFLICT", "CONFLICT"]


@pytest.mark.parametrize("answer", [200, 500])
def test_a_retry_during_an_automatic_attempt_waits_for_its_answer(make_partner, receiver,
                                                                  answer):
    # The retry starts a fresh cycle while a ladder attempt is out. That POST's outcome no
    # longer decides the status, but it is still out: an ignore meanwhile is refused (it
    # could be answered 2xx), and the retry's own POST goes once it is answered.
    release = threading.Event()
    receiver.program("/hook", [status(500), held(release, status(answer))],
                     then=status(200))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    receiver.wait_for(2, "/hook")  # the ladder's retry (scaled to ms), held
    try:
        assert h.notification(nid).status == NotificationStatus.FAILED
        assert partner.api.post(RETRY.format(nid)).status_code == 200
        t.assert_error(partner.api.post(IGNORE.format(nid)), 409, "CONFLICT", BEING_SENT)
        with pytest.raises(AssertionError):
            receiver.wait_for(3, "/hook", timeout=0.5)  # not beside the one out
    finally:
        released_at = time.monotonic()
        release.set()
    # Its message found the row leased; the sweep (the outbox reader) sends it.
    h.wait_until(lambda: len(h.attempts(nid)) == 3, on_poll=sweep_due,
                 message="the retry's own POST")
    assert receiver.wait_for(3, "/hook")[2].at >= released_at
    assert [a.trigger for a in sorted(h.attempts(nid), key=lambda a: a.started_at)] == [
        Trigger.AUTOMATIC, Trigger.AUTOMATIC, Trigger.MANUAL]
    h.wait_until(lambda: h.notification(nid).status == NotificationStatus.SENT,
                 message="sent by the retry")


def test_ignore_sent_is_conflict(make_partner):
    partner = make_partner()
    nid = h.insert_notification(partner.partner_id, "http://127.0.0.1:9/hook",
                                status=NotificationStatus.SENT)
    before = t.snapshot(nid)
    t.assert_error(partner.api.post(IGNORE.format(nid)), 409, "CONFLICT")
    assert t.snapshot(nid) == before
    assert [r.outcome for r in partner_requests(partner.partner_id)] == ["CONFLICT"]


@pytest.mark.parametrize("state", [NotificationStatus.PENDING, NotificationStatus.NOT_SENT])
def test_ignore_pending_or_not_sent(make_partner, state):
    partner = make_partner()
    due = utcnow() + timedelta(days=1) if state == NotificationStatus.PENDING else None
    nid = h.insert_notification(partner.partner_id, "http://127.0.0.1:9/hook", status=state,
                                next_attempt_at=due)
    for _ in range(2):  # idempotent
        response = partner.api.post(IGNORE.format(nid))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "NOT_SENT"
    assert h.notification(nid).next_attempt_at is None


def test_ignore_unknown_or_foreign_is_not_found(make_partner):
    mine = make_partner(name="Mine")
    theirs = make_partner(name="Theirs")
    foreign = h.insert_notification(theirs.partner_id, "http://127.0.0.1:9/hook",
                                    status=NotificationStatus.FAILED)
    before = t.snapshot(foreign)
    for bad in (foreign, "8374f327-38bd-4b0b-b8a7-2524599eb903", "nope"):
        t.assert_error(mine.api.post(IGNORE.format(bad)), 404, "NOT_FOUND", t.NOT_FOUND)
    assert t.snapshot(foreign) == before
