"""A real SMTP server on 127.0.0.1 for the tests (aiosmtpd): records the messages it
accepts and the logins it is sent, and can offer STARTTLS with a self-signed certificate.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.ports import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        # (mechanism, login, password, whether the connection was TLS)
        self.logins: list[tuple[str, str, str, bool]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            encrypted = server.transport.get_extra_info("ssl_object") is not None
            with self.lock:
                self.logins.append((mechanism, auth_data.login.decode(),
                                    auth_data.password.decode(), encrypted))
        return AuthResult(success=True)


@contextmanager
def serve(inbox: Inbox, **smtp_options: Any) -> Iterator[int]:
    """Serve ``inbox`` on loopback; yields the port. ``smtp_options`` go to aiosmtpd's
    Controller: ``ssl_context`` (TLS from the start), ``tls_context`` (STARTTLS),
    ``auth_require_tls``...; logins go to ``inbox``."""
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(),
                            authenticator=inbox.authenticate, **smtp_options)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path] | None:
    """(certificate, key) for 127.0.0.1, made with the openssl command; None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
