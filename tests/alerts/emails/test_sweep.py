"""The alert sweep, run by beat: it mails an alert whose message was lost or that met SMTP
down, offers the recent unmailed alerts that have an address (through its index), and
only those still true of their endpoint are mailed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

import beat_schedule
from deliverer.alerts import service as alerts
from deliverer.alerts.tasks import sweep_alert_emails
from deliverer.db import session_scope
from deliverer.models import Alert, Endpoint, utcnow
from tests.alerts.emails.helpers import (
    alert_emailed_at,
    another_alert,
    email_claimed_until,
    endpoint_of,
    minutes_ago,
    unmailed_alert,
)
from tests.support.helpers import wait_until
from tests.support.ports import free_port
from tests.support.smtp import Inbox, serve


def test_beat_runs_the_alert_sweep(settings, celery_app):
    entry = beat_schedule.build(settings)["email-unmailed-alerts"]
    assert entry["task"] == sweep_alert_emails.name
    assert entry["schedule"] == timedelta(minutes=5)
    assert celery_app.conf.beat_schedule["email-unmailed-alerts"]["task"] == entry["task"]


def test_the_sweep_mails_an_alert_whose_message_was_lost(settings, worker, smtp_inbox,
                                                         override_settings):
    inbox, smtp_url = smtp_inbox
    alert_id = unmailed_alert(settings, created_at=minutes_ago(10))
    with override_settings(smtp_url=smtp_url) as s:
        sweep_alert_emails.apply_async()  # what beat sends; run by the worker
        wait_until(lambda: inbox.messages, message="the alert e-mail")
        wait_until(lambda: alert_emailed_at(alert_id), message="emailed_at recorded")
        assert alerts.enqueue_unmailed(s) == 0  # mailed: not offered again
    assert [m[1] for m in inbox.messages] == [["ops@merchant.test"]]


def test_the_sweep_mails_an_alert_once_smtp_is_back(settings, worker, override_settings):
    alert_id = unmailed_alert(settings, created_at=minutes_ago(10))
    with override_settings(smtp_url=f"smtp://127.0.0.1:{free_port()}") as s:  # SMTP down
        with pytest.raises(ConnectionRefusedError):
            alerts.email_alert(alert_id, s)  # what the task's last retry meets
        assert alert_emailed_at(alert_id) is None  # not e-mailed, and the claim given back:
        assert email_claimed_until(alert_id) is None
    inbox = Inbox()
    with serve(inbox) as port, override_settings(smtp_url=f"smtp://127.0.0.1:{port}") as s:
        assert alerts.enqueue_unmailed(s) == 1
        wait_until(lambda: alert_emailed_at(alert_id), message="emailed_at recorded")
        wait_until(lambda: inbox.messages, message="the alert e-mail")
    assert len(inbox.messages) == 1


def test_the_sweep_offers_recent_unmailed_alerts_that_have_an_address(settings,
                                                                      override_settings):
    oldest = unmailed_alert(settings, created_at=minutes_ago(23 * 60), name="Oldest")
    due = unmailed_alert(settings, created_at=minutes_ago(10), name="Due")
    unmailed_alert(settings, created_at=minutes_ago(1), name="Fresh")  # its first task's turn
    unmailed_alert(settings, created_at=minutes_ago(25 * 60), name="Stale")  # given up on
    unmailed_alert(settings, alert_email=None, created_at=minutes_ago(10), name="No address")
    mailed = unmailed_alert(settings, created_at=minutes_ago(10), name="Mailed")
    with session_scope() as session:
        session.execute(update(Alert).where(Alert.id == mailed).values(emailed_at=utcnow()))
    with session_scope() as session:
        assert alerts.unmailed_alerts(session, settings, utcnow()) == []  # no SMTP
        with override_settings(smtp_url="smtp://127.0.0.1:9") as s:
            assert alerts.unmailed_alerts(session, s, utcnow()) == [oldest, due]
            assert alerts.unmailed_alerts(session, s, utcnow(), limit=1) == [oldest]


def test_only_alerts_still_true_of_their_endpoint_are_emailed(settings, smtp_inbox,
                                                               override_settings):
    """Mailed late (SMTP down meanwhile, the address set afterwards), a "failing" alert
    told the merchant to fix an endpoint that had recovered, or to retry one disabled
    since; a "disabled" one, of an endpoint enabled since."""
    inbox, smtp_url = smtp_inbox
    recovered = unmailed_alert(settings, created_at=minutes_ago(10), name="Recovered")
    disabled_since = unmailed_alert(settings, created_at=minutes_ago(10), name="Disabled since")
    failing = unmailed_alert(settings, created_at=minutes_ago(10), name="Still failing")
    endpoints = {a: endpoint_of(a) for a in (recovered, disabled_since, failing)}
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoints[recovered])
                        .values(failing_since=None))
        session.execute(update(Endpoint).where(Endpoint.id == endpoints[disabled_since])
                        .values(disabled_at=utcnow(), disabled_reason="410 Gone"))
    enabled_again_id = another_alert(failing, alerts.KIND_DISABLED, minutes_ago(20))
    with override_settings(smtp_url=smtp_url, alert_sender="alerts@deliverer.test") as s:
        with session_scope() as session:
            assert alerts.unmailed_alerts(session, s, utcnow()) == [failing]
        for alert_id in (recovered, disabled_since, enabled_again_id):
            assert not alerts.email_alert(alert_id, s)
        assert alerts.email_alert(failing, s)
    assert len(inbox.messages) == 1
    assert [alert_emailed_at(a) is None for a in (recovered, disabled_since, enabled_again_id,
                                             failing)] == [True, True, True, False]


def test_the_alert_sweep_reads_the_unmailed_alerts_index(settings, override_settings):
    """Beat runs the sweep every 5 minutes: it reads the recent un-mailed alerts through
    ``ix_alerts_unmailed``, not the whole table (which only grows)."""
    from sqlalchemy import event

    from deliverer.db import get_database

    for minutes in (10, 60, 30 * 60):
        unmailed_alert(settings, created_at=minutes_ago(minutes), name=f"Acme {minutes}")
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
