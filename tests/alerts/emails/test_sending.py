"""How an alert e-mail is sent: to the partner's alert address by the real worker, saying
since when the endpoint fails, never with credentials over plain text, and what the SMTP
server's refusals mean (for good: said, not retried; its policy: retried)."""

from __future__ import annotations

import email
import email.policy
import email.utils
import logging
import smtplib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliverer.alerts import service as alerts
from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.models import Alert, Endpoint, NotificationStatus, utcnow
from deliverer.partners import webhook_settings
from tests.alerts.emails.helpers import (
    alert_emailed_at,
    any_alert_emailed,
    email_claimed_until,
    minutes_ago,
    unmailed_alert,
)
from tests.support import receiver as rx
from tests.support.helpers import insert_notification, new_partner, wait_until
from tests.support.smtp import Inbox, serve


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
        wait_until(lambda: any_alert_emailed(), message="emailed_at recorded")
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
    alert_id = unmailed_alert(settings)
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


def test_credentials_without_tls_leave_the_alert_unmailed(settings, override_settings, caplog):
    inbox = Inbox()
    alert_id = unmailed_alert(settings)
    caplog.set_level(logging.ERROR, logger=alerts.__name__)
    with (serve(inbox, auth_require_tls=False) as port,
          override_settings(smtp_url=f"smtp://alerts:s3cret@127.0.0.1:{port}") as s):
        assert alerts.email_alert(alert_id, s) is False
    assert inbox.logins == [] and inbox.messages == []
    assert alert_emailed_at(alert_id) is None and email_claimed_until(alert_id) is None
    assert any("offers no STARTTLS" in r.getMessage() for r in caplog.records)


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
    alert_id = unmailed_alert(settings, alert_email="reject@merchant.test",
                              created_at=minutes_ago(10))
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
    alert_id = unmailed_alert(settings, alert_email="relay@merchant.test",
                              created_at=minutes_ago(10))
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
