"""Alert e-mails over SMTP (``DELIVERER_SMTP_URL``).

``smtps://[user:password@]host[:port]`` (default port 465) talks TLS from the start.
``smtp://[user:password@]host[:port]`` (default port 25) upgrades the connection with
STARTTLS whenever the server offers it. Certificates are verified (the system's trust
store; ``SSL_CERT_FILE`` adds one) unless the URL ends with ``?tls_verify=false``.
Credentials are only ever sent over TLS: an ``smtp://`` URL with a user, to a server that
does not offer STARTTLS, is refused rather than logging in in cleartext.

The conversation is bounded in time, so that whoever sends knows for how long a message
may still be in flight (``LONGEST_SEND``): every wait for the server lasts at most
``SMTP_TIMEOUT``, and nothing more is sent to the server, the message's final dot
included, once ``SMTP_SEND_WITHIN`` has passed since the call began. A server may only
accept a message on that dot, so it cannot accept it later than that; its answer is
awaited one ``SMTP_TIMEOUT`` more (a server that trickles its answer out byte by byte can
stretch that wait, not the moment it accepted).
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer as Buffer

# Each wait for the server (a reply, a connection, a write), in seconds.
SMTP_TIMEOUT = 10.0
# Every command, and the message itself, is sent within this many seconds of the start.
SMTP_SEND_WITHIN = 30.0
# How long a ``send_mail`` call with the defaults may go on (but for a server trickling
# its answers out): past it, the server has accepted the message or never will.
LONGEST_SEND = SMTP_SEND_WITHIN + SMTP_TIMEOUT


class SmtpConfigError(ValueError):
    """``DELIVERER_SMTP_URL`` cannot be used as it is; trying again will not help."""


class _BoundedSMTP(smtplib.SMTP):
    """Sends nothing past ``send_by`` (a ``time.monotonic()`` value): ``TimeoutError``."""

    send_by = float("inf")

    def send(self, s: Buffer | str) -> None:
        remaining = self.send_by - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("SMTP conversation too slow: nothing more is sent to the server")
        if self.sock is not None:
            self.sock.settimeout(min(self.timeout, remaining))
        try:
            super().send(s)
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)  # the reply may take the full timeout


class _BoundedSMTP_SSL(_BoundedSMTP, smtplib.SMTP_SSL):
    pass


# Enhanced status codes (RFC 3463) of a refusal that is this message's: its mailbox
# (5.1.x: no such user, bad address; 5.2.x: mailbox full, disabled) or its content
# (5.6.x). Security and policy (5.7.x: relaying denied, authentication required) and
# a bare 5xx are the server's or the configuration's, for every alert: retried.
_THIS_MESSAGE = re.compile(rb"^5\.(1|2|6)\.\d{1,3}\b")


def _mailbox_refusal(code: int, reply: bytes) -> str | None:
    if code >= 500 and _THIS_MESSAGE.match(reply.lstrip()):
        return f"{code} {reply.decode(errors='replace')}"
    return None


def permanent_refusal(exc: BaseException) -> str | None:
    """The server's reply if ``exc`` is its permanent refusal of this message's
    recipient or content (a 5xx with a 5.1, 5.2 or 5.6 enhanced code): sending it again
    cannot help. A refused login, sender or relay is the configuration's: None."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refusals = [_mailbox_refusal(code, reply) for code, reply in exc.recipients.values()]
        if refusals and all(refusals):
            return refusals[0]
    if isinstance(exc, smtplib.SMTPDataError):
        error = exc.smtp_error
        return _mailbox_refusal(exc.smtp_code,
                                error if isinstance(error, bytes) else error.encode())
    return None


def _domain_of(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2] or "deliverer.invalid"


def message_id(sender: str, local: str) -> str:
    """A Message-ID of ours for ``local`` (unique per message), at the sender's domain."""
    return f"<{local}@{_domain_of(sender)}>"


def send_mail(smtp_url: str, sender: str, to: str, subject: str, body: str,
              timeout: float = SMTP_TIMEOUT, send_within: float = SMTP_SEND_WITHIN, *,
              message_id: str | None = None) -> None:
    """``message_id``: the same for every try of one message, so that a copy sent again
    (a worker that died after the server accepted it) is recognised as one."""
    parts = urlsplit(smtp_url)
    if parts.scheme not in ("smtp", "smtps"):
        raise SmtpConfigError("DELIVERER_SMTP_URL must be smtp:// or smtps://")
    context = _tls_context(parts.query)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    # RFC 5322 requires Date; without it and a Message-ID, mail filters score it as spam.
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id or make_msgid(domain=_domain_of(sender))
    message.set_content(body)
    host = parts.hostname or "127.0.0.1"
    send_by = time.monotonic() + send_within
    client: _BoundedSMTP
    if parts.scheme == "smtps":
        client = _BoundedSMTP_SSL(host, parts.port or 465, timeout=timeout, context=context)
    else:
        client = _BoundedSMTP(host, parts.port or 25, timeout=timeout)
    client.send_by = send_by
    try:
        if parts.scheme == "smtp":
            client.ehlo()
            if client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
        if parts.username:
            if not isinstance(client.sock, ssl.SSLSocket):
                raise SmtpConfigError(
                    f"SMTP server {host} offers no STARTTLS: credentials are not sent over a "
                    "connection that is not encrypted (use smtps://, or a server that offers "
                    "STARTTLS)")
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(message)
    except BaseException:
        client.close()
        raise
    # The message is accepted: a failed QUIT must not make the caller send it again.
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _tls_context(query: str) -> ssl.SSLContext:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"tls_verify"}
    if unknown:
        raise SmtpConfigError(f"DELIVERER_SMTP_URL: unknown option(s) {sorted(unknown)}; "
                              "the only one is tls_verify")
    verify = options.get("tls_verify", "true").strip().lower()
    if verify not in ("true", "false", "1", "0", "yes", "no"):
        raise SmtpConfigError("DELIVERER_SMTP_URL: tls_verify must be true or false")
    context = ssl.create_default_context()
    if verify in ("false", "0", "no"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
