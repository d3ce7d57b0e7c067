"""Alert e-mails reach a real SMTP server on loopback, sent by the real worker."""

from __future__ import annotations

import socket
import threading

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.models import Alert, utcnow
from deliverer.partners import webhook_settings
from tests.support import receiver as rx
from tests.support.helpers import insert_notification, new_partner, wait_until


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_inbox():
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield inbox, f"smtp://127.0.0.1:{controller.port}"
    finally:
        controller.stop()


def test_alert_is_emailed_to_the_partners_alert_address(settings, worker, receiver,
                                                        smtp_inbox, override_settings):
    inbox, smtp_url = smtp_inbox
    url = receiver.always("/gone", rx.status(410))
    partner = new_partner(settings, url)
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner.partner_id,
                                         alert_email="ops@merchant.test")
    with override_settings(smtp_url=smtp_url, alert_sender="alerts@deliverer.test") as s:
        nid = insert_notification(partner.partner_id, url, next_attempt_at=utcnow())
        service.deliver(nid, s)
        wait_until(lambda: inbox.messages, message="the alert e-mail")
        mail_from, rcpt, content = inbox.messages[0]
        assert mail_from == "alerts@deliverer.test"
        assert rcpt == ["ops@merchant.test"]
        text = content.decode()
        assert "410 Gone" in text and url in text
        wait_until(lambda: _emailed(), message="emailed_at recorded")
    assert len(inbox.messages) == 1


def _emailed() -> bool:
    with session_scope() as session:
        alert = session.scalar(select(Alert))
        return alert is not None and alert.emailed_at is not None
