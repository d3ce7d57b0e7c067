"""Diagnose: the delivery path to an endpoint, step by step, and which step fails and why.

DNS (the addresses found, and whether the SSRF guard allows each, as ``netguard`` and
``http.dial`` decide for a delivery), TCP connect (with its time), the TLS handshake
(certificate subject, issuer, expiry, hostname match, and the verification's verdict),
then a signed ``webhook.test`` POST through the real sender (status, time, the first
bytes of the answer). A step that fails ends the run: the later ones are skipped.
No database access; nothing is recorded.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from deliverer.config import Settings
from deliverer.delivery.sending import netguard, sender, signing
from deliverer.delivery.sending.perform import sender_config
from deliverer.errors import UnsafeUrl
from deliverer.models import utcnow
from deliverer.models.base import new_id

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
BODY_SHOWN = 300  # characters of the answer shown


@dataclass
class Step:
    name: str
    state: str = SKIPPED
    duration_ms: int | None = None
    summary: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Diagnosis:
    url: str
    steps: list[Step]
    ran_at: datetime

    @property
    def failed_step(self) -> Step | None:
        return next((s for s in self.steps if s.state == FAILED), None)


def _ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def diagnose(url: str, secrets: list[str], settings: Settings) -> Diagnosis:
    steps = [Step("DNS resolution"), Step("TCP connect"), Step("TLS handshake"),
             Step("Signed webhook.test POST")]
    result = Diagnosis(url, steps, utcnow())
    dns, tcp, tls, post = steps
    try:
        netguard.check_url_form(url)
    except UnsafeUrl as exc:
        dns.state, dns.summary = FAILED, exc.message
        return result
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)

    addresses = _resolve(dns, host, port, settings)
    if addresses is None:
        return result
    sock = _connect(tcp, addresses, settings)
    if sock is None:
        return result
    with sock:
        if https:
            if not _handshake(tls, sock, host, settings):
                return result
        else:
            tls.summary = "Not used: the URL is http://, so webhooks go unencrypted."
    _post(post, url, secrets, settings)
    return result


def _resolve(step: Step, host: str, port: int, settings: Settings
             ) -> list[netguard.AddrInfo] | None:
    start = time.monotonic()
    # getaddrinfo has no timeout of its own: waited for as long as a connect may take,
    # in a thread left to finish alone if the resolver hangs.
    pool = ThreadPoolExecutor(max_workers=1)
    lookup = pool.submit(socket.getaddrinfo, host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    pool.shutdown(wait=False)
    try:
        infos = lookup.result(timeout=settings.connect_timeout)
    except (socket.gaierror, UnicodeError) as exc:
        step.state, step.duration_ms = FAILED, _ms(start)
        step.summary = f"{host} does not resolve: {exc}"
        return None
    except FutureTimeout:
        step.state, step.duration_ms = FAILED, _ms(start)
        step.summary = (f"No DNS answer for {host} within {settings.connect_timeout:g} s: "
                        "its name servers do not answer.")
        return None
    step.duration_ms = _ms(start)
    forbidden = False
    named = not netguard.is_address(host)
    for address in dict.fromkeys(str(info[4][0]) for info in infos):
        try:
            netguard.check_address(address, allow_private=settings.allow_private_urls)
            verdict = "allowed"
        except (UnsafeUrl, ValueError):
            verdict = ("forbidden: a link-local address (cloud metadata)"
                       if settings.allow_private_urls
                       else "forbidden: a private, loopback or reserved address")
            forbidden = True
            if named:
                # Not shown, as in an attempt's error (``netguard.check_address``): with
                # split-horizon DNS, an internal address of a name resolved only inside.
                address = "(an address not shown)"
        step.details.append((address, verdict))
    if forbidden:
        # As ``netguard.vetted_addresses``: one forbidden answer refuses the host.
        step.state = FAILED
        where = ("link-local addresses" if settings.allow_private_urls
                 else "private networks")
        step.summary = (f"{host} resolves to a forbidden address: webhooks are not sent to "
                        f"{where}, so every delivery to it fails.")
        return None
    step.state, step.summary = OK, f"{host} resolves to {len(step.details)} address(es)."
    return list(infos)


def _connect(step: Step, infos: list[netguard.AddrInfo],
             settings: Settings) -> socket.socket | None:
    start = time.monotonic()
    deadline = start + settings.connect_timeout
    error: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            step.details.append((str(sockaddr[0]), f"failed: {exc}"))
            if time.monotonic() >= deadline:
                break
            continue
        step.state, step.duration_ms = OK, _ms(start)
        step.summary = f"Connected to {sockaddr[0]} port {sockaddr[1]} in {step.duration_ms} ms."
        sock.settimeout(settings.total_timeout)
        return sock
    step.state, step.duration_ms = FAILED, _ms(start)
    if isinstance(error, TimeoutError):
        step.summary = f"No answer within the connect timeout ({settings.connect_timeout:g} s)."
    elif isinstance(error, ConnectionRefusedError):
        step.summary = "Connection refused: nothing listens on that port."
    else:
        step.summary = f"Could not connect: {error}"
    return None


def _handshake(step: Step, sock: socket.socket, host: str, settings: Settings) -> bool:
    """The handshake as deliveries make it (verified, SNI), then the certificate's facts,
    read again without verification if it failed: an expired or self-signed certificate
    is exactly what the merchant needs to read."""
    start = time.monotonic()
    verdict: str | None = None
    cert: dict[str, Any] = {}
    peer = sock.getpeername()  # the handshake takes the socket over
    try:
        with ssl.create_default_context().wrap_socket(sock, server_hostname=host) as tls:
            step.duration_ms = _ms(start)
            cert = tls.getpeercert() or {}
            step.details.append(("Protocol", str(tls.version())))
    except ssl.SSLCertVerificationError as exc:
        step.duration_ms = _ms(start)
        verdict = exc.verify_message or str(exc)
    except (ssl.SSLError, OSError) as exc:
        step.state, step.duration_ms = FAILED, _ms(start)
        step.summary = f"TLS handshake failed: {exc}"
        return False
    if verdict is not None:
        cert = _unverified_certificate(peer, host, settings)
    _describe(step, cert, host)
    if verdict is not None:
        step.state = FAILED
        step.summary = f"The certificate was refused: {verdict}."
        return False
    step.state, step.summary = OK, "The certificate is valid for this host."
    return True


def _unverified_certificate(peer: tuple[Any, ...], host: str,
                            settings: Settings) -> dict[str, Any]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(peer[:2], timeout=settings.connect_timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return {}
    if not der:
        return {}
    # The standard library decodes a certificate into the usual dictionary only from
    # a PEM file (a private helper; no dependency for it).
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as pem:
        pem.write(ssl.DER_cert_to_PEM_cert(der))
    try:
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(pem.name)  # type: ignore[attr-defined]
        return decoded
    except (ssl.SSLError, OSError, AttributeError):
        return {}
    finally:
        os.unlink(pem.name)


def _name(rdns: Any) -> str:
    return ", ".join(f"{k}={v}" for rdn in rdns or () for k, v in rdn)


def _describe(step: Step, cert: dict[str, Any], host: str) -> None:
    if not cert:
        step.details.append(("Certificate", "could not be read"))
        return
    step.details.append(("Subject", _name(cert.get("subject"))))
    step.details.append(("Issuer", _name(cert.get("issuer"))))
    if cert.get("notAfter"):
        expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)
        state = "expired" if expires <= utcnow() else "valid"
        step.details.append(("Expires", f"{expires:%Y-%m-%d %H:%M:%S} UTC ({state})"))
    names = [value for kind, value in cert.get("subjectAltName", ())
             if kind in ("DNS", "IP Address")]
    matched = any(_matches(name, host) for name in names)
    step.details.append(("Names", ", ".join(names) or "none"))
    step.details.append(("Hostname match", f"yes, {host}" if matched else f"no: not {host}"))


def _matches(name: str, host: str) -> bool:
    """RFC 6125's rules, as the handshake applies them: one leftmost wildcard label."""
    try:
        return ipaddress.ip_address(name.strip()) == ipaddress.ip_address(host)
    except ValueError:
        pass
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name.startswith("*."):
        return "." in host and host.split(".", 1)[1] == name[2:]
    return name == host


def _post(step: Step, url: str, secrets: list[str], settings: Settings) -> None:
    message_id = "diag_" + new_id()
    now = utcnow()
    body = json.dumps({"id": message_id, "type": "webhook.test", "reference": "diagnose",
                       "timestamp": now.isoformat().replace("+00:00", "Z"), "data": {}},
                      separators=(",", ":"), sort_keys=True).encode()
    headers = (signing.signature_headers(secrets, message_id, int(time.time()), body)
               if secrets else {"webhook-id": message_id})
    result = sender.send(url, body, headers, sender_config(settings))
    step.duration_ms = result.duration_ms
    if result.status_code is not None:
        step.details.append(("HTTP status", str(result.status_code)))
    if result.body:
        step.details.append(("Answer (first bytes)", result.body[:BODY_SHOWN]))
    if result.success:
        step.state = OK
        step.summary = f"Accepted: HTTP {result.status_code} in {result.duration_ms} ms."
        return
    error = result.error or {}
    step.state = FAILED
    step.summary = f"{error.get('message', 'failed')}. {error.get('hint', '')}".strip()
