"""A real SMTP server on 127.0.0.1 for the tests (aiosmtpd): records the messages it
accepts and the logins it is sent, and can offer STARTTLS with a self-signed certificate.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
