"""Alert e-mails over SMTP (``DELIVERER_SMTP_URL``).

``smtps://[user:password@]host[:port]`` (default port 465) talks TLS from the start.
``smtp://[user:password@]host[:port]`` (default port 25) upgrades the connection with
STARTTLS whenever the server offers it. Certificates are verified (the system's trust
store; ``SSL_CERT_FILE`` adds one) unless the URL ends with ``?tls_verify=false``.
Credentials are only ever sent over TLS: an ``smtp://`` URL with a user, to a server that
does not offer STARTTLS, is refused rather than logging in in cleartext.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import parse_qsl, unquote, urlsplit


class SmtpConfigError(ValueError):
    """``DELIVERER_SMTP_URL`` cannot be used as it is; trying again will not help."""


def send_mail(smtp_url: str, sender: str, to: str, subject: str, body: str,
              timeout: float = 10.0) -> None:
    parts = urlsplit(smtp_url)
    if parts.scheme not in ("smtp", "smtps"):
        raise SmtpConfigError("DELIVERER_SMTP_URL must be smtp:// or smtps://")
    context = _tls_context(parts.query)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    host = parts.hostname or "127.0.0.1"
    client: smtplib.SMTP
    if parts.scheme == "smtps":
        client = smtplib.SMTP_SSL(host, parts.port or 465, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(host, parts.port or 25, timeout=timeout)
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
