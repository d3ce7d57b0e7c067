"""The sender against a real HTTP receiver on loopback: every outcome of one send
classified (2xx, other statuses, redirects, timeouts, refusals, resets, TLS, DNS, answers
that are not HTTP, URLs it cannot send to)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deliverer.delivery.sending.sender import SenderConfig, send
from tests.delivery.sender.helpers import BODY, CONFIG, assert_payload
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.ports import closed_port
from tests.support.tls import self_signed_certificate, server_tls_context

# The sender alone, against loopback servers: no database or broker, nothing that differs
# between backends.
pytestmark = pytest.mark.unit


@pytest.mark.parametrize("code", [200, 201, 202, 204])
def test_2xx_is_success(receiver, code):
    url = receiver.always("/ok", rx.ok(code, b"" if code == 204 else b"thanks"))
    called_at, before = datetime.now(UTC), time.monotonic()
    result = send(url, BODY, {"webhook-id": "msg_1"}, CONFIG)
    wall_ms = (time.monotonic() - before) * 1000
    assert result.success is True
    assert result.status_code == code
    assert result.error is None
    assert result.duration_ms <= wall_ms  # timed within the call
    assert called_at <= result.started_at <= datetime.now(UTC)
    [got] = receiver.requests("/ok")
    assert got.method == "POST"
    assert got.body == BODY
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "deliverer-test/1"
    assert got.headers["webhook-id"] == "msg_1"
    assert "cookie" not in got.headers


@pytest.mark.parametrize("code, message", [
    (500, "HTTP 500 Internal Server Error"),
    (404, "HTTP 404 Not Found"),
    (401, "HTTP 401 Unauthorized"),
    (400, "HTTP 400"),
    (410, "HTTP 410"),
    (418, "HTTP 418"),
    (502, "HTTP 502"),
])
def test_non_2xx_is_http_status_failure(receiver, code, message):
    url = receiver.always("/fail", rx.status(code, b"nope"))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "http_status", code, message)
    assert result.status_code == code
    assert result.body == "nope"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_is_a_failure_and_not_followed(receiver, code):
    target = receiver.url("/elsewhere")
    url = receiver.always("/moved", rx.redirect(target, code))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "redirect", code, "/elsewhere")
    assert [r.path for r in receiver.requests()] == ["/moved"]


def test_timeout_when_receiver_is_slower_than_total_timeout(receiver):
    url = receiver.always("/slow", rx.sleep(3.0))
    start = time.monotonic()
    result = send(url, BODY, {}, CONFIG)
    elapsed = time.monotonic() - start
    # The same words whichever ends it, the read timeout or the deadline's watchdog.
    assert_payload(result, "timeout", None, "No complete response within the 0.5 s deadline")
    assert elapsed < CONFIG.total_timeout + 0.5
    assert len(receiver.requests("/slow")) == 1


@pytest.mark.parametrize("code, headers", [(200, {}), (302, {"Location": "/x"})])
def test_total_deadline_bounds_a_trickling_body(receiver, code, headers):
    # One byte every 0.1 s stays under any per-read timeout; only a total deadline stops it.
    url = receiver.always("/trickle", rx.trickle(40, 0.1, code, headers))
    start = time.monotonic()
    result = send(url, BODY, {}, CONFIG)
    elapsed = time.monotonic() - start
    assert_payload(result, "timeout", code, "No complete response within the 0.5 s deadline")
    assert elapsed < CONFIG.total_timeout + 0.5, elapsed


def test_connection_refused():
    url = f"http://127.0.0.1:{closed_port()}/hook"
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "connection_refused")
    assert result.status_code is None


def test_connection_reset(receiver):
    url = receiver.always("/reset", rx.reset())
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "connection_reset")
    assert len(receiver.requests("/reset")) == 1


def test_tls_failure_says_why_in_the_tls_library_words(tmp_path):
    made = self_signed_certificate(tmp_path)
    if made is None:
        pytest.skip("no openssl command to make a certificate")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.socket = server_tls_context(*made).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # Room for the handshake: under a CI run's two parallel passes it overran the
        # shared CONFIG's 0.5 s deadline once (a timeout, not the TLS failure tested).
        result = send(f"https://127.0.0.1:{server.server_port}/hook", BODY, {},
                      replace(CONFIG, connect_timeout=10.0, total_timeout=10.0))
    finally:
        server.shutdown()
        server.server_close()
    assert_payload(result, "tls")
    # OpenSSL's words: "self-signed certificate" (3.x), "self signed certificate" (1.1).
    assert result.error["message"].startswith(
        "TLS handshake failed: certificate verify failed: self")


@pytest.mark.parametrize("answer", [b"\x00\x01GARBAGE NOT HTTP\xff\r\n\r\n",
                                    b"SSH-2.0-OpenSSH_9.6\r\n"])
def test_an_answer_that_is_not_http(receiver, answer):
    """Something answered (another service on the port, a TLS server on http://): not
    "closed by the host", which sends merchants to their logs for a crash."""
    def not_http(handler, _receiver):
        handler.wfile.write(answer)
        handler.close_connection = True

    url = receiver.always("/other", not_http)
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "invalid_response", message="not HTTP")
    assert result.error["hint"].startswith("Invalid response")


def test_a_stalled_tls_handshake_is_said_so():
    """It was 'No complete response within the 15 s deadline', cut at the 5 s connect
    timeout before any request was sent (a black-box try)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepted by the kernel, never answered
    try:
        config = SenderConfig(connect_timeout=0.5, total_timeout=2.0,
                              allow_private_urls=True)
        result = send(f"https://127.0.0.1:{server.getsockname()[1]}/hook", BODY, {}, config)
    finally:
        server.close()
    assert_payload(result, "timeout",
                   message="Timed out during the TLS handshake (no request was sent)")
    assert result.duration_ms < 1500


def test_an_answer_cut_short_is_said_so(receiver):
    def cut(handler, _receiver):
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"0123456789")
        handler.wfile.flush()
        handler.close_connection = True

    result = send(receiver.always("/cut", cut), BODY, {}, CONFIG)
    assert_payload(result, "connection_reset", 200,
                   "Connection closed by the webhook host before its answer was complete")


def test_dns_failure():
    with h.unresolvable_host() as host:
        result = send(f"http://{host}/hook", BODY, {}, CONFIG)
    assert_payload(result, "dns")


def test_tls_failure_against_plain_http(receiver):
    result = send(receiver.url("/hook", scheme="https"), BODY, {}, CONFIG)
    assert_payload(result, "tls", message="TLS handshake failed")
    assert receiver.requests("/hook") == []
    # The TLS library's words, not urllib3's wrapping of them.
    assert "Max retries" not in result.error["message"]
    assert "Pool" not in result.error["message"]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///nohost", "not a url"])
def test_invalid_url(url):
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "invalid_url")
