"""Diagnose, step by step, against real servers on loopback: a healthy receiver, one that
answers 500, a port nothing listens on, a TLS server with a self-signed certificate, and
an address the SSRF guard forbids. No DNS: every URL is an IP literal."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from deliverer.db import session_scope
from deliverer.models import Endpoint, PartnerRequest
from deliverer.portal.diagnose import FAILED, OK, SKIPPED, diagnose
from tests.console.helpers import publish
from tests.support import helpers as h
from tests.support.page_client import csrf_of
from tests.support.ports import closed_port
from tests.support.receiver import ok, status
from tests.support.tls import self_signed_certificate, server_tls_context

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def states(result) -> list[str]:
    return [step.state for step in result.steps]


def details(step) -> dict[str, str]:
    return dict(step.details)


def test_a_healthy_endpoint_passes_every_step_with_a_signed_test_post(settings, receiver):
    url = receiver.program("/fine", [], ok(200, b'{"received": true}'))
    result = diagnose(url, [SECRET], settings)
    assert states(result) == [OK, OK, SKIPPED, OK]  # http://: no TLS
    dns, tcp, tls, post = result.steps
    assert details(dns) == {"127.0.0.1": "allowed"}
    assert tcp.duration_ms is not None and "Connected to 127.0.0.1" in tcp.summary
    assert "unencrypted" in tls.summary
    assert details(post)["HTTP status"] == "200"
    assert details(post)["Answer (first bytes)"] == '{"received": true}'
    [sent] = receiver.requests("/fine")
    Webhook(SECRET).verify(sent.body, sent.headers)  # raises unless correctly signed
    assert b'"type":"webhook.test"' in sent.body
    assert result.failed_step is None


def test_an_error_answer_fails_the_last_step_with_its_first_bytes(settings, receiver):
    url = receiver.program("/broken", [], status(500, b"Traceback (most recent call last)"))
    result = diagnose(url, [SECRET], settings)
    post = result.steps[3]
    assert post.state == FAILED and "HTTP 500" in post.summary
    assert details(post)["Answer (first bytes)"].startswith("Traceback")
    assert result.failed_step is post


def test_a_port_nothing_listens_on_fails_at_tcp_connect(settings):
    result = diagnose(f"http://127.0.0.1:{closed_port()}/hook", [SECRET], settings)
    assert states(result) == [OK, FAILED, SKIPPED, SKIPPED]
    assert "Connection refused" in result.steps[1].summary


def test_a_forbidden_address_fails_at_dns_and_nothing_is_dialled(settings, receiver):
    url = receiver.program("/private", [], ok())
    result = diagnose(url, [SECRET], settings.with_overrides(allow_private_urls=False))
    assert states(result) == [FAILED, SKIPPED, SKIPPED, SKIPPED]
    assert details(result.steps[0])["127.0.0.1"].startswith("forbidden")
    assert "forbidden address" in result.steps[0].summary
    assert receiver.requests("/private") == []


def test_a_names_forbidden_answer_is_not_shown(settings, receiver):
    """The URL's own address is shown (above); a name's forbidden answer is not: with
    split-horizon DNS, a name resolving only inside would show an internal address."""
    url = receiver.program("/private", [], ok()).replace("127.0.0.1", "localhost")
    result = diagnose(url, [SECRET], settings.with_overrides(allow_private_urls=False))
    assert states(result) == [FAILED, SKIPPED, SKIPPED, SKIPPED]
    shown = " ".join(f"{key} {value}" for key, value in result.steps[0].details)
    assert "forbidden" in shown and "127.0.0.1" not in shown and "::1" not in shown
    assert receiver.requests("/private") == []


def expired_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, its key): the server's, issued by the CA for
    127.0.0.1, expires the moment it is made ("-days 0")."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a test certificate")
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "expired.pem", directory / "expired-key.pem", directory / "r"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=Test CA", "-keyout", str(ca_key), "-out", str(ca)],
        ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "0", "-extfile", str(ext), "-out", str(cert)],
    ):
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)
    return ca, cert, key


@contextlib.contextmanager
def tls_server(directory: Path, made: tuple[Path, Path] | None = None) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 answering 200, with the certificate ``made`` (a
    self-signed one by default)."""
    made = made or self_signed_certificate(directory)
    if made is None:
        pytest.skip("no openssl command to make a test certificate")
    context = server_tls_context(*made)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ssl.SSLError):
                conn.settimeout(5)
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_self_signed_certificate_fails_the_tls_step_and_says_why(settings, tmp_path):
    with tls_server(tmp_path) as port:
        result = diagnose(f"https://127.0.0.1:{port}/hook", [SECRET], settings)
    assert states(result) == [OK, OK, FAILED, SKIPPED]
    tls = result.steps[2]
    assert "self-signed certificate" in tls.summary
    facts = details(tls)
    assert facts["Subject"] == "commonName=127.0.0.1"
    assert facts["Issuer"] == "commonName=127.0.0.1"
    assert facts["Expires"].endswith("UTC (valid)")
    assert facts["Hostname match"] == "yes, 127.0.0.1"


def test_the_diagnose_button_shows_the_failing_step(portal, merchant, worker, settings,
                                                    override_settings):
    url = f"http://127.0.0.1:{closed_port()}/hook"
    with override_settings(time_scale=1.0):
        shop = merchant(url)
        published = publish(settings, shop.partner_id, "TXN-DIAG")
        h.wait_until(lambda: h.notification(published.notification_id).attempt_count,
                     message="first attempt")
        with session_scope() as session:
            endpoint_id = session.scalar(select(Endpoint.public_id))
        client = portal(shop.partner_id)
        page = client.get(f"/portal/endpoints/{endpoint_id}")
        assert 'id="diagnose"' in page.text
        answer = client.post(f"/portal/endpoints/{endpoint_id}/diagnose",
                             {"csrf_token": csrf_of(page.text)})
    assert answer.status_code == 200
    assert "TCP connect fails:" in answer.text and "Connection refused" in answer.text
    assert answer.text.count("step-skipped") >= 2


def test_an_expired_certificate_is_what_the_tls_step_says(settings, tmp_path, monkeypatch):
    """A merchant whose certificate expired should read exactly that."""
    ca, cert, key = expired_certificate(tmp_path)
    made_at = time.time()  # at or after its notAfter
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # trusted: only its expiry is wrong
    # Its notAfter is the second it was made in: wait until that second is over.
    h.wait_until(lambda: time.time() >= int(made_at) + 1.05, timeout=5,
                 message="the certificate to expire")
    with tls_server(tmp_path, (cert, key)) as port:
        result = diagnose(f"https://127.0.0.1:{port}/hook", [SECRET], settings)
    assert states(result) == [OK, OK, FAILED, SKIPPED]
    tls = result.steps[2]
    assert tls.summary == "The certificate was refused: certificate has expired."
    facts = details(tls)
    assert facts["Subject"] == "commonName=127.0.0.1"
    assert facts["Issuer"] == "commonName=Test CA"
    assert facts["Expires"].endswith("UTC (expired)")


def test_diagnose_is_limited_as_test_events_are_under_parallel_presses(
        portal, portal_server, merchant, settings):
    shop = merchant(f"http://127.0.0.1:{closed_port()}/hook")
    with session_scope() as session:
        endpoint_id = session.scalar(select(Endpoint.public_id))
    client = portal(shop.partner_id)
    token = csrf_of(client.get(f"/portal/endpoints/{endpoint_id}").text)
    with portal_server.overridden(endpoint_test_rate_per_minute=3), \
            ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: client.post(f"/portal/endpoints/{endpoint_id}/diagnose",
                                  {"csrf_token": token}, allow_redirects=False), range(8)))
    ran = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 302]
    assert (len(ran), len(refused)) == (3, 5), [a.status_code for a in answers]
    assert all("TCP connect fails:" in a.text for a in ran)
    shown = client.get(refused[0].headers["Location"]).text
    assert re.search(r"Diagnosis not run: too many at once\. Try again in \d+ s\.", shown)
    with session_scope() as session:
        outcomes = session.scalars(select(PartnerRequest.outcome).where(
            PartnerRequest.partner_id == shop.partner_id,
            PartnerRequest.kind == "diagnose")).all()
    assert sorted(outcomes) == ["ACCEPTED"] * 3 + ["TOO_MANY_REQUESTS"] * 5
