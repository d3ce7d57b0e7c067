"""The mailer against a real SMTP server on loopback: credentials only over TLS, and a
conversation bounded in time."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from deliverer.alerts.mailer import SmtpConfigError, send_mail
from tests.support.smtp import Inbox, serve
from tests.support.tls import self_signed_certificate, server_tls_context

pytestmark = pytest.mark.unit


def _send(url: str) -> None:
    send_mail(url, "alerts@deliverer.test", "ops@merchant.test", "Failing", "Body", timeout=5)


def test_no_login_in_cleartext_when_the_server_offers_no_starttls():
    inbox = Inbox()
    # A server that would take AUTH in cleartext: the client must not offer it.
    with serve(inbox, auth_require_tls=False) as port:
        with pytest.raises(SmtpConfigError, match="offers no STARTTLS"):
            _send(f"smtp://alerts:s3cret@127.0.0.1:{port}")
        assert inbox.logins == [] and inbox.messages == []
        # Without credentials there is nothing to protect: the mail goes.
        _send(f"smtp://127.0.0.1:{port}")
    assert len(inbox.messages) == 1 and inbox.logins == []


def test_unknown_url_options_are_refused():
    with pytest.raises(SmtpConfigError, match="unknown option"):
        _send("smtp://127.0.0.1:9?verify=no")
    with pytest.raises(SmtpConfigError, match="smtp:// or smtps://"):
        _send("http://127.0.0.1:9")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = self_signed_certificate(tmp_path_factory.mktemp("smtp-tls"))
    if made is None:
        pytest.skip("no openssl command to make a test certificate")
    return made


def test_starttls_before_login_with_the_certificate_verified(certificate, monkeypatch):
    cert, key = certificate
    inbox = Inbox()
    # AUTH is only offered after STARTTLS, as on most submission servers (port 587).
    with serve(inbox, tls_context=server_tls_context(cert, key)) as port:
        url = f"smtp://alerts%40deliverer.test:s3cret@127.0.0.1:{port}"
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted: nothing sent
            _send(url)
        assert inbox.logins == [] and inbox.messages == []
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        _send(url)
    assert [login[1:] for login in inbox.logins] == [("alerts@deliverer.test", "s3cret", True)]
    assert len(inbox.messages) == 1


def test_tls_verify_false_skips_the_certificate_check(certificate):
    cert, key = certificate
    inbox = Inbox()
    with serve(inbox, tls_context=server_tls_context(cert, key)) as port:
        _send(f"smtp://alerts:s3cret@127.0.0.1:{port}?tls_verify=false")
    assert [login[1:] for login in inbox.logins] == [("alerts", "s3cret", True)]
    assert len(inbox.messages) == 1


def test_smtps_is_tls_from_the_start(certificate, monkeypatch):
    cert, key = certificate
    inbox = Inbox()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with serve(inbox, ssl_context=server_tls_context(cert, key), auth_require_tls=False) as port:
        _send(f"smtps://alerts:s3cret@127.0.0.1:{port}")
    assert [login[1:] for login in inbox.logins] == [("alerts", "s3cret", True)]
    assert len(inbox.messages) == 1


class _SlowToAnswerRcpt(Inbox):
    """Answers RCPT TO only after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await asyncio.sleep(self.delay)
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_nothing_is_sent_past_the_conversations_deadline():
    """Each wait is within the timeout, but the conversation has run past ``send_within``:
    the message is not sent (the server could accept it later than the caller counts on)."""
    inbox = _SlowToAnswerRcpt(delay=0.6)
    with serve(inbox) as port:
        url = f"smtp://127.0.0.1:{port}"
        with pytest.raises(TimeoutError, match="nothing more is sent"):
            send_mail(url, "alerts@deliverer.test", "ops@merchant.test", "Failing", "Body",
                      timeout=5, send_within=0.5)
        assert inbox.messages == []
        send_mail(url, "alerts@deliverer.test", "ops@merchant.test", "Failing", "Body",
                  timeout=5, send_within=5)
    assert len(inbox.messages) == 1
