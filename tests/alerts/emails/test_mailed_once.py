"""An alert is mailed once: a second or concurrent task for it sends nothing, a worker that
died mid-send leaves a claim that runs out, one taken for dead does not free its
successor's claim, and a flapping endpoint's failing alerts go at most once an hour. Real
SMTP server on loopback, real worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from celery.signals import task_postrun
from sqlalchemy import update

import deliverer
from deliverer.alerts import service as alerts
from deliverer.alerts.tasks import send_alert_email
from deliverer.db import session_scope
from deliverer.models import Alert, utcnow
from tests.alerts.emails.helpers import (
    alert_emailed_at,
    another_alert,
    email_claimed_until,
    minutes_ago,
    unmailed_alert,
)
from tests.support.cli import cli_env
from tests.support.helpers import wait_until
from tests.support.smtp import Inbox, serve


class _SlowInbox(Inbox):
    """Holds every message at DATA until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.arrived.set()
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


@contextmanager
def _task_results(alert_id: int) -> Iterator[list[object]]:
    """What each ``send_alert_email`` task for the alert that the worker runs returns."""
    runs: list[object] = []

    def ran(sender=None, args=None, retval=None, **_):
        if sender.name == send_alert_email.name and list(args or ()) == [alert_id]:
            runs.append(retval)

    task_postrun.connect(ran, weak=False)
    try:
        yield runs
    finally:
        task_postrun.disconnect(ran)


def test_a_second_task_for_an_alert_being_mailed_sends_nothing(settings, worker,
                                                               override_settings):
    alert_id = unmailed_alert(settings, created_at=minutes_ago(10))
    inbox = _SlowInbox()
    with serve(inbox) as port, override_settings(smtp_url=f"smtp://127.0.0.1:{port}") as s:
        first = threading.Thread(target=alerts.email_alert, args=(alert_id, s))
        first.start()
        try:
            assert inbox.arrived.wait(10), "the first send never reached DATA"
            # In flight: the sweep's task, a duplicate, a redelivery all find it claimed.
            assert alerts.email_alert(alert_id, s) is False
            assert alerts.enqueue_unmailed(s) == 0
        finally:
            inbox.release.set()
            first.join(15)
        # Sent: more tasks for it, run by the worker, send nothing either.
        with _task_results(alert_id) as runs:
            for _ in range(3):
                send_alert_email.delay(alert_id)
            wait_until(lambda: len(runs) == 3, message="three more tasks run")
    assert runs == [False, False, False]
    assert len(inbox.messages) == 1 and alert_emailed_at(alert_id) is not None


class _HoldingInbox(Inbox):
    """Holds every RCPT TO while ``hold`` is set: the message itself never arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.held = threading.Event()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        while self.hold.is_set():
            self.held.set()
            await asyncio.sleep(0.01)
        envelope.rcpt_tos.append(address)
        return "250 OK"


_SEND_IN_A_PROCESS = ("import sys\n"
                      "from deliverer.alerts.service import email_alert\n"
                      "from deliverer.config import get_settings\n"
                      "email_alert(int(sys.argv[1]), get_settings())\n")


def test_an_alert_whose_worker_died_mid_send_is_mailed_once_its_claim_runs_out(
        settings, worker, override_settings):
    """A process e-mailing the alert is killed (``kill -9``) in the middle of the SMTP
    conversation. Its claim keeps every other task off the alert for as long as the send
    could have gone on, then the alert sweep offers it again and the worker mails it."""
    alert_id = unmailed_alert(settings, created_at=minutes_ago(10))
    inbox = _HoldingInbox()
    inbox.hold.set()
    with serve(inbox) as port, override_settings(smtp_url=f"smtp://127.0.0.1:{port}") as s:
        sender = subprocess.Popen(
            [sys.executable, "-c", _SEND_IN_A_PROCESS, str(alert_id)],
            env=cli_env(s, DELIVERER_SMTP_URL=s.smtp_url),
            cwd=Path(deliverer.__file__).resolve().parent.parent)
        try:
            wait_until(lambda: inbox.held.is_set() or sender.poll() is not None, timeout=60,
                       message="the sending process at RCPT TO")
            assert sender.poll() is None, f"the sending process exited {sender.returncode}"
        finally:
            sender.kill()  # SIGKILL: no clean-up of any kind
            sender.wait(30)
        inbox.hold.clear()
        claimed_until = email_claimed_until(alert_id)
        assert claimed_until is not None and alert_emailed_at(alert_id) is None
        assert claimed_until - utcnow() > alerts.email_claim(s) - timedelta(seconds=30)

        # While the claim lasts: a redelivered task sends nothing, the sweep offers nothing.
        assert alerts.email_alert(alert_id, s) is False
        assert alerts.enqueue_unmailed(s) == 0
        assert alerts.enqueue_unmailed(s, now=claimed_until - timedelta(seconds=1)) == 0
        assert inbox.messages == []

        # The claim has run out (as if that much time had passed): the sweep offers the
        # alert, the worker mails it, once.
        with session_scope() as session:
            session.execute(update(Alert).where(Alert.id == alert_id)
                            .values(email_claimed_until=utcnow() - timedelta(seconds=1)))
        assert alerts.enqueue_unmailed(s) == 1
        wait_until(lambda: alert_emailed_at(alert_id), message="emailed_at recorded")
        assert email_claimed_until(alert_id) is None
        assert alerts.enqueue_unmailed(s) == 0
        assert alerts.email_alert(alert_id, s) is False
    assert [m[1] for m in inbox.messages] == [["ops@merchant.test"]]


def test_concurrent_tasks_for_one_alert_mail_it_once(settings, worker, override_settings):
    """The commit's task, the sweep's and duplicates, all run by the worker at once."""
    alert_id = unmailed_alert(settings, created_at=minutes_ago(10))
    inbox = _HoldingInbox()
    inbox.hold.set()  # the first to claim holds the alert while the others arrive
    with (_task_results(alert_id) as runs, serve(inbox) as port,
          override_settings(smtp_url=f"smtp://127.0.0.1:{port}") as s):
        assert alerts.enqueue_unmailed(s) == 1
        for _ in range(3):
            send_alert_email.delay(alert_id)
        assert inbox.held.wait(30), "no task reached RCPT TO"
        wait_until(lambda: len(runs) == 3, message="the other tasks run")
        inbox.hold.clear()
        wait_until(lambda: len(runs) == 4, message="the sending task done")
    assert sorted(runs, key=bool) == [False, False, False, True]
    assert len(inbox.messages) == 1 and alert_emailed_at(alert_id) is not None


def test_a_worker_taken_for_dead_does_not_free_its_successors_claim(settings,
                                                                     override_settings):
    """A send that outlived its claim and then failed gives back its own claim only: the
    worker that claimed the alert since keeps it, and nobody else sends meanwhile."""
    alert_id = unmailed_alert(settings, created_at=minutes_ago(10))
    with override_settings(smtp_url="smtp://127.0.0.1:9") as s:
        long_ago = utcnow() - alerts.email_claim(s) - timedelta(minutes=1)
        with session_scope() as session:
            first = alerts.claim_alert_email(session, alert_id, s, now=long_ago)
        assert first is not None
        with session_scope() as session:
            second = alerts.claim_alert_email(session, alert_id, s)
            assert alerts.claim_alert_email(session, alert_id, s) is None
        assert second is not None and second > utcnow()
        alerts._unclaim(alert_id, first, s)  # the first worker's send fails at last
        assert email_claimed_until(alert_id) == second
        assert alerts.enqueue_unmailed(s) == 0
        alerts._unclaim(alert_id, second, s)
        assert email_claimed_until(alert_id) is None


def test_a_flapping_endpoints_failing_alerts_are_mailed_at_most_once_an_hour(
        settings, smtp_inbox, override_settings):
    # Every failure after a success began a failing period, and each period's alert was
    # mailed: 8 e-mails in 3 minutes to one merchant (the operator try). Recorded still,
    # one per period; mailed once the hour has passed, if still true by then.
    inbox, smtp_url = smtp_inbox
    first = unmailed_alert(settings, created_at=minutes_ago(30))
    second_id = another_alert(first, alerts.KIND_FAILING, minutes_ago(10))
    with override_settings(smtp_url=smtp_url, alert_sender="alerts@deliverer.test") as s:
        assert alerts.email_alert(first, s)
        assert not alerts.email_alert(second_id, s)  # within the hour
        with session_scope() as session:  # the sweep offers it again meanwhile
            assert alerts.unmailed_alerts(session, s, utcnow()) == [second_id]
            session.execute(update(Alert).where(Alert.id == first).values(
                emailed_at=utcnow() - alerts.EMAIL_COOLDOWN - timedelta(seconds=1)))
        assert alerts.email_alert(second_id, s)
    assert len(inbox.messages) == 2
    assert alert_emailed_at(second_id) is not None
