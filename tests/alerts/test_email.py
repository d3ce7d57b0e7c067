"""Alert e-mails reach a real SMTP server on loopback, sent by the real worker."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import logging
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.signals import task_postrun
from sqlalchemy import select, update

import beat_schedule
import deliverer
from deliverer.alerts import service as alerts
from deliverer.alerts.tasks import send_alert_email, sweep_alert_emails
from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.models import Alert, Endpoint, NotificationStatus, utcnow
from deliverer.partners import webhook_settings
from tests.support import receiver as rx
from tests.support.cli import cli_env
from tests.support.helpers import insert_notification, new_partner, wait_until
from tests.support.ports import free_port
from tests.support.smtp import Inbox, serve


@pytest.fixture
def smtp_inbox():
    inbox = Inbox()
    with serve(inbox) as port:
        yield inbox, f"smtp://127.0.0.1:{port}"


def test_alert_is_emailed_to_the_partners_alert_address(settings, worker, receiver,
                                                        smtp_inbox, override_settings,
                                                        caplog):
    inbox, smtp_url = smtp_inbox
    caplog.set_level(logging.WARNING, logger=alerts.__name__)
    url = receiver.always("/gone", rx.status(410))
    partner = new_partner(settings, url)
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner.partner_id,
                                         alert_email="ops@merchant.test")
    with override_settings(smtp_url=smtp_url, alert_sender="alerts@deliverer.test") as s:
        nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                  next_attempt_at=utcnow())
        service.deliver(nid, s)
        wait_until(lambda: inbox.messages, message="the alert e-mail")
        mail_from, rcpt, content = inbox.messages[0]
        assert mail_from == "alerts@deliverer.test"
        assert rcpt == ["ops@merchant.test"]
        text = content.decode()
        assert "410 Gone" in text and url in text
        wait_until(lambda: _emailed(), message="emailed_at recorded")
    assert len(inbox.messages) == 1
    # RFC 5322's Date, and a Message-ID of the alert's own (the same on every try).
    message = email.message_from_bytes(content)
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    with session_scope() as session:
        alert_id = session.scalar(select(Alert.id))
    assert message["Message-ID"].startswith(f"<deliverer-alert-{alert_id}.")
    assert message["Message-ID"].endswith("@deliverer.test>")
    assert "console" not in text and "Raised: " in text
    # One line for the operator, naming the endpoint and why.
    logged = [r.getMessage() for r in caplog.records if r.name == "deliverer.alerts.service"]
    assert [line for line in logged if f"alert {alert_id} (endpoint_disabled) for endpoint ep_"
            in line and "answered 410 Gone" in line], logged


def test_a_failing_alert_says_since_when_the_endpoint_fails(settings, worker, smtp_inbox,
                                                            override_settings):
    inbox, smtp_url = smtp_inbox
    alert_id = _alert(settings)
    failing_since = utcnow() - timedelta(hours=1)
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        session.execute(update(Endpoint).where(Endpoint.id == alert.endpoint_id)
                        .values(failing_since=failing_since))
    with override_settings(smtp_url=smtp_url, alert_sender="alerts@deliverer.test") as s:
        assert alerts.email_alert(alert_id, s)
    message = email.message_from_bytes(inbox.messages[0][2], policy=email.policy.default)
    text = message.get_content()
    assert f"Failing since: {failing_since.isoformat()}" in text
    assert "or your webhook portal" in text


def _emailed() -> bool:
    with session_scope() as session:
        alert = session.scalar(select(Alert))
        return alert is not None and alert.emailed_at is not None


def _alert(settings, alert_email: str | None = "ops@merchant.test",
           created_at: datetime | None = None, name: str = "Acme") -> int:
    """A partner (with this alert address) and an alert on its endpoint; no message sent,
    as if the broker had been down when the alert was committed."""
    url = "http://127.0.0.1:9/hook"
    partner = new_partner(settings, url, name=name)
    if alert_email:
        with session_scope() as session:
            webhook_settings.update_settings(session, settings, partner.partner_id,
                                             alert_email=alert_email)
    insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                        next_attempt_at=None)
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.partner_id == partner.partner_id))
        assert endpoint is not None
        created_at = created_at or utcnow()
        # Still failing since before it: only a current alert is e-mailed.
        endpoint.failing_since = created_at - timedelta(minutes=1)
        alert = Alert(partner_id=partner.partner_id, endpoint_id=endpoint.id,
                      kind=alerts.KIND_FAILING, message="failing", created_at=created_at)
        session.add(alert)
        session.flush()
        return alert.id


def _emailed_at(alert_id: int) -> datetime | None:
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert.emailed_at


def _claimed_until(alert_id: int) -> datetime | None:
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert.email_claimed_until


def test_credentials_without_tls_leave_the_alert_unmailed(settings, override_settings, caplog):
    inbox = Inbox()
    alert_id = _alert(settings)
    caplog.set_level(logging.ERROR, logger=alerts.__name__)
    with (serve(inbox, auth_require_tls=False) as port,
          override_settings(smtp_url=f"smtp://alerts:s3cret@127.0.0.1:{port}") as s):
        assert alerts.email_alert(alert_id, s) is False
    assert inbox.logins == [] and inbox.messages == []
    assert _emailed_at(alert_id) is None and _claimed_until(alert_id) is None
    assert any("offers no STARTTLS" in r.getMessage() for r in caplog.records)


def _minutes_ago(minutes: float) -> datetime:
    return utcnow() - timedelta(minutes=minutes)


def test_beat_runs_the_alert_sweep(settings, celery_app):
    entry = beat_schedule.build(settings)["email-unmailed-alerts"]
    assert entry["task"] == sweep_alert_emails.name
    assert entry["schedule"] == timedelta(minutes=5)
    assert celery_app.conf.beat_schedule["email-unmailed-alerts"]["task"] == entry["task"]


def test_the_sweep_mails_an_alert_whose_message_was_lost(settings, worker, smtp_inbox,
                                                         override_settings):
    inbox, smtp_url = smtp_inbox
    alert_id = _alert(settings, created_at=_minutes_ago(10))
    with override_settings(smtp_url=smtp_url) as s:
        sweep_alert_emails.apply_async()  # what beat sends; run by the worker
        wait_until(lambda: inbox.messages, message="the alert e-mail")
        wait_until(lambda: _emailed_at(alert_id), message="emailed_at recorded")
        assert alerts.enqueue_unmailed(s) == 0  # mailed: not offered again
    assert [m[1] for m in inbox.messages] == [["ops@merchant.test"]]


def test_the_sweep_mails_an_alert_once_smtp_is_back(settings, worker, override_settings):
    alert_id = _alert(settings, created_at=_minutes_ago(10))
    with override_settings(smtp_url=f"smtp://127.0.0.1:{free_port()}") as s:  # SMTP down
        with pytest.raises(ConnectionRefusedError):
            alerts.email_alert(alert_id, s)  # what the task's last retry meets
        assert _emailed_at(alert_id) is None  # not e-mailed, and the claim given back:
        assert _claimed_until(alert_id) is None
    inbox = Inbox()
    with serve(inbox) as port, override_settings(smtp_url=f"smtp://127.0.0.1:{port}") as s:
        assert alerts.enqueue_unmailed(s) == 1
        wait_until(lambda: _emailed_at(alert_id), message="emailed_at recorded")
        wait_until(lambda: inbox.messages, message="the alert e-mail")
    assert len(inbox.messages) == 1


def test_the_sweep_offers_recent_unmailed_alerts_that_have_an_address(settings,
                                                                      override_settings):
    oldest = _alert(settings, created_at=_minutes_ago(23 * 60), name="Oldest")
    due = _alert(settings, created_at=_minutes_ago(10), name="Due")
    _alert(settings, created_at=_minutes_ago(1), name="Fresh")  # its first task's turn
    _alert(settings, created_at=_minutes_ago(25 * 60), name="Stale")  # given up on
    _alert(settings, alert_email=None, created_at=_minutes_ago(10), name="No address")
    mailed = _alert(settings, created_at=_minutes_ago(10), name="Mailed")
    with session_scope() as session:
        session.execute(update(Alert).where(Alert.id == mailed).values(emailed_at=utcnow()))
    with session_scope() as session:
        assert alerts.unmailed_alerts(session, settings, utcnow()) == []  # no SMTP
        with override_settings(smtp_url="smtp://127.0.0.1:9") as s:
            assert alerts.unmailed_alerts(session, s, utcnow()) == [oldest, due]
            assert alerts.unmailed_alerts(session, s, utcnow(), limit=1) == [oldest]


def _endpoint_of(alert_id: int) -> Any:
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert.endpoint_id


def _another_alert(alert_id: int, kind: str, created_at: datetime) -> int:
    """One more alert of ``kind`` on the endpoint of ``alert_id``."""
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        another = Alert(partner_id=alert.partner_id, endpoint_id=alert.endpoint_id,
                        kind=kind, message=kind, created_at=created_at)
        session.add(another)
        session.flush()
        return another.id


def test_only_alerts_still_true_of_their_endpoint_are_emailed(settings, smtp_inbox,
                                                               override_settings):
    """Mailed late (SMTP down meanwhile, the address set afterwards), a "failing" alert
    told the merchant to fix an endpoint that had recovered, or to retry one disabled
    since; a "disabled" one, of an endpoint enabled since."""
    inbox, smtp_url = smtp_inbox
    recovered = _alert(settings, created_at=_minutes_ago(10), name="Recovered")
    disabled_since = _alert(settings, created_at=_minutes_ago(10), name="Disabled since")
    failing = _alert(settings, created_at=_minutes_ago(10), name="Still failing")
    endpoints = {a: _endpoint_of(a) for a in (recovered, disabled_since, failing)}
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoints[recovered])
                        .values(failing_since=None))
        session.execute(update(Endpoint).where(Endpoint.id == endpoints[disabled_since])
                        .values(disabled_at=utcnow(), disabled_reason="410 Gone"))
    enabled_again_id = _another_alert(failing, alerts.KIND_DISABLED, _minutes_ago(20))
    with override_settings(smtp_url=smtp_url, alert_sender="alerts@deliverer.test") as s:
        with session_scope() as session:
            assert alerts.unmailed_alerts(session, s, utcnow()) == [failing]
        for alert_id in (recovered, disabled_since, enabled_again_id):
            assert not alerts.email_alert(alert_id, s)
        assert alerts.email_alert(failing, s)
    assert len(inbox.messages) == 1
    assert [_emailed_at(a) is None for a in (recovered, disabled_since, enabled_again_id,
                                             failing)] == [True, True, True, False]


class _RefusingInbox(Inbox):
    """A mail server with no mailbox ``reject@...``: 550 at RCPT."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject@"):
            self.refused += 1
            return "550 5.1.1 No such user"
        if address.startswith("relay@"):  # the server's policy: every recipient alike
            self.refused += 1
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_an_address_the_server_refuses_for_good_is_said_not_retried(settings,
                                                                     override_settings,
                                                                     caplog):
    """A 5xx is permanent: retried as a network blip it was tried six times a task, then
    every five minutes for a day, each with an ERROR traceback, and nobody was told."""
    caplog.set_level(logging.WARNING, logger=alerts.__name__)
    inbox = _RefusingInbox()
    alert_id = _alert(settings, alert_email="reject@merchant.test",
                      created_at=_minutes_ago(10))
    with serve(inbox) as port, override_settings(
            smtp_url=f"smtp://127.0.0.1:{port}", alert_sender="alerts@deliverer.test") as s:
        assert not alerts.email_alert(alert_id, s)  # no exception: the task does not retry
        assert not alerts.email_alert(alert_id, s)
        with session_scope() as session:
            assert alerts.unmailed_alerts(session, s, utcnow()) == []
    assert inbox.refused == 1 and inbox.messages == []
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        assert (alert.emailed_at, alert.email_claimed_until) == (None, None)
        assert alert.email_error == "550 5.1.1 No such user"
    assert [r.levelname for r in caplog.records if "refused it" in r.getMessage()] == \
        ["WARNING"]


def test_a_refusal_of_the_servers_policy_is_retried(settings, override_settings):
    """Relaying denied (5.7.1) is the configuration's, every alert's: recorded as this
    address's, every alert of the outage would be lost once the relay is fixed."""
    inbox = _RefusingInbox()
    alert_id = _alert(settings, alert_email="relay@merchant.test",
                      created_at=_minutes_ago(10))
    with serve(inbox) as port, override_settings(
            smtp_url=f"smtp://127.0.0.1:{port}", alert_sender="alerts@deliverer.test") as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # the task retries it
            alerts.email_alert(alert_id, s)
        with session_scope() as session:
            assert alerts.unmailed_alerts(session, s, utcnow()) == [alert_id]
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        assert (alert.email_error, alert.email_claimed_until) == (None, None)


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
    alert_id = _alert(settings, created_at=_minutes_ago(10))
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
    assert len(inbox.messages) == 1 and _emailed_at(alert_id) is not None


def test_the_alert_sweep_reads_the_unmailed_alerts_index(settings, override_settings):
    """Beat runs the sweep every 5 minutes: it reads the recent un-mailed alerts through
    ``ix_alerts_unmailed``, not the whole table (which only grows)."""
    from sqlalchemy import event

    from deliverer.db import get_database

    for minutes in (10, 60, 30 * 60):
        _alert(settings, created_at=_minutes_ago(minutes), name=f"Acme {minutes}")
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM alerts" in statement:
            statements.append((statement, parameters))

    engine = get_database().engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope() as session, override_settings(smtp_url="smtp://127.0.0.1:9") as s:
            assert len(alerts.unmailed_alerts(session, s, utcnow())) == 2
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    [(statement, parameters)] = statements
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if settings.is_sqlite:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
        else:
            # A table this small is cheapest read whole; the question is whether the index
            # can serve the query at all, its partial predicate included.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()
    assert "ix_alerts_unmailed" in plan, plan


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
    alert_id = _alert(settings, created_at=_minutes_ago(10))
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
        claimed_until = _claimed_until(alert_id)
        assert claimed_until is not None and _emailed_at(alert_id) is None
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
        wait_until(lambda: _emailed_at(alert_id), message="emailed_at recorded")
        assert _claimed_until(alert_id) is None
        assert alerts.enqueue_unmailed(s) == 0
        assert alerts.email_alert(alert_id, s) is False
    assert [m[1] for m in inbox.messages] == [["ops@merchant.test"]]


def test_concurrent_tasks_for_one_alert_mail_it_once(settings, worker, override_settings):
    """The commit's task, the sweep's and duplicates, all run by the worker at once."""
    alert_id = _alert(settings, created_at=_minutes_ago(10))
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
    assert len(inbox.messages) == 1 and _emailed_at(alert_id) is not None


def test_a_worker_taken_for_dead_does_not_free_its_successors_claim(settings,
                                                                     override_settings):
    """A send that outlived its claim and then failed gives back its own claim only: the
    worker that claimed the alert since keeps it, and nobody else sends meanwhile."""
    alert_id = _alert(settings, created_at=_minutes_ago(10))
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
        assert _claimed_until(alert_id) == second
        assert alerts.enqueue_unmailed(s) == 0
        alerts._unclaim(alert_id, second, s)
        assert _claimed_until(alert_id) is None


def test_a_flapping_endpoints_failing_alerts_are_mailed_at_most_once_an_hour(
        settings, smtp_inbox, override_settings):
    # Every failure after a success began a failing period, and each period's alert was
    # mailed: 8 e-mails in 3 minutes to one merchant (the operator try). Recorded still,
    # one per period; mailed once the hour has passed, if still true by then.
    inbox, smtp_url = smtp_inbox
    first = _alert(settings, created_at=_minutes_ago(30))
    second_id = _another_alert(first, alerts.KIND_FAILING, _minutes_ago(10))
    with override_settings(smtp_url=smtp_url, alert_sender="alerts@deliverer.test") as s:
        assert alerts.email_alert(first, s)
        assert not alerts.email_alert(second_id, s)  # within the hour
        with session_scope() as session:  # the sweep offers it again meanwhile
            assert alerts.unmailed_alerts(session, s, utcnow()) == [second_id]
            session.execute(update(Alert).where(Alert.id == first).values(
                emailed_at=utcnow() - alerts.EMAIL_COOLDOWN - timedelta(seconds=1)))
        assert alerts.email_alert(second_id, s)
    assert len(inbox.messages) == 2
    assert _emailed_at(second_id) is not None
