"""The sender against a real HTTP receiver on loopback: every outcome classified."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deliverer.delivery.sending import netguard, sender
from deliverer.delivery.sending.http import dial
from deliverer.delivery.sending.sender import SenderConfig, parse_retry_after, send
from deliverer.delivery.troubleshooting import hint_for
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.ports import closed_port
from tests.support.tls import self_signed_certificate, server_tls_context

# The sender alone, against loopback servers: no database or broker, nothing that differs
# between backends.
pytestmark = pytest.mark.unit

BODY = b'{"id":"evt_1","type":"transaction.updated"}'
CONFIG = SenderConfig(connect_timeout=1.0, total_timeout=0.5, max_response_bytes=20 * 1024,
                      allow_private_urls=True, user_agent="deliverer-test/1")
GUARDED = SenderConfig(connect_timeout=1.0, total_timeout=0.5, allow_private_urls=False)


def assert_payload(result, kind, status=None, message=None):
    assert result.success is False
    assert result.error is not None
    assert set(result.error) == {"kind", "message", "httpStatus", "hint"}
    assert result.error["kind"] == kind
    assert result.error["httpStatus"] == status
    assert result.error["hint"] == hint_for(sender.FailureKind(kind), status)
    assert result.error["message"]
    if message is not None:
        assert message in result.error["message"]


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
        result = send(f"https://127.0.0.1:{server.server_port}/hook", BODY, {}, CONFIG)
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


def test_ssrf_guard_blocks_loopback(receiver):
    result = send(receiver.url("/hook"), BODY, {}, GUARDED)
    assert_payload(result, "blocked_address", message="127.0.0.1")
    # The guard checks the address before dialling it, so nothing is sent.
    time.sleep(0.1)
    assert receiver.requests() == []


def test_ssrf_guard_blocks_a_name_resolving_to_loopback(receiver):
    result = send(f"http://localhost:{receiver.port}/hook", BODY, {}, GUARDED)
    assert_payload(result, "blocked_address")
    # A name's answer is not repeated to the merchant: with split-horizon DNS, that of a
    # name resolving only inside would be an internal address.
    assert "127.0.0.1" not in result.error["message"]
    assert "::1" not in result.error["message"]
    time.sleep(0.1)
    assert receiver.requests() == []


class FakeNet:
    """Names resolve to the answers a test gives, without a DNS query, and no connect
    leaves loopback: one to another address goes to the loopback port routed for it, or
    is refused without a packet sent."""

    def __init__(self) -> None:
        # One answer per lookup, the last repeating: what a rebinding DNS server gives.
        self.answers: dict[str, list[list[str]]] = {}
        self.routes: dict[tuple[str, int], tuple[str, int]] = {}
        self.lookups: list[str] = []
        self.connects: list[tuple[str, int]] = []  # attempted on the test's thread

    def answer(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)

    def getaddrinfo(self, real: Any, host: Any, port: Any, *args: Any,
                    **kwargs: Any) -> list[Any]:
        answers = self.answers.get(host)
        flags = kwargs.get("flags", args[3] if len(args) > 3 else 0)
        if answers is None or flags & socket.AI_NUMERICHOST:  # not a DNS query
            return real(host, port, *args, **kwargs)  # type: ignore[no-any-return]
        self.lookups.append(host)
        ips = answers.pop(0) if len(answers) > 1 else answers[0]
        if not ips:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port)))
                for ip in ips]

    def connect(self, real: Any, sock: socket.socket, address: Any) -> None:
        if threading.get_ident() == self.thread:
            self.connects.append(address)
        if ipaddress.ip_address(address[0]).is_loopback:
            return real(sock, address)  # type: ignore[no-any-return]
        if address in self.routes:
            return real(sock, self.routes[address])  # type: ignore[no-any-return]
        if address[0] in self.silent:  # drops the SYN: the connect times out
            time.sleep(sock.gettimeout() or 0.0)
            raise TimeoutError("timed out")
        raise ConnectionRefusedError(f"test network: {address} is not reachable")

    thread = 0
    silent: frozenset[str] = frozenset()


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> FakeNet:
    fake = FakeNet()
    fake.thread = threading.get_ident()
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **kw: fake.getaddrinfo(real_getaddrinfo, *a, **kw))
    monkeypatch.setattr(socket.socket, "connect",
                        lambda sock, address: fake.connect(real_connect, sock, address))
    return fake


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A bare listening socket: any connection made to it waits in its accept queue."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(0.2)
        yield sock


def assert_never_connected(listener: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        conn, _ = listener.accept()
        conn.close()


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["93.184.216.34", "127.0.0.1"]],
                         ids=["internal", "public-and-internal"])
@pytest.mark.parametrize("port_state", ["open", "closed"])
def test_ssrf_guard_blocks_a_rebound_name_before_any_connect(net, listener, answer,
                                                             port_state):
    """A name public when saved, internal when sent: one verdict whether the internal port
    is open or closed (no port scan through error payloads), and no connection to it."""
    port = listener.getsockname()[1] if port_state == "open" else closed_port()
    url = f"http://rebound.test:{port}/hook"
    net.answer("rebound.test", ["93.184.216.34"])
    assert netguard.validate_url(url, allow_private=False) == url  # saving it succeeds
    net.answer("rebound.test", answer)
    result = send(url, BODY, {}, GUARDED)
    assert_payload(result, "blocked_address", message="forbidden address")
    assert "127.0.0.1" not in result.error["message"]
    assert net.connects == []
    assert_never_connected(listener)


def test_link_local_is_never_dialled_even_where_private_addresses_are_allowed(net,
                                                                              listener):
    """CONFIG allows private URLs (the embedded default's scripts/start does): a name
    answering with the cloud's metadata address is still refused before any connect."""
    port = listener.getsockname()[1]
    net.answer("metadata.test", ["169.254.169.254"])
    result = send(f"http://metadata.test:{port}/latest", BODY, {}, CONFIG)
    assert_payload(result, "blocked_address", message="forbidden address")
    assert "169.254" not in result.error["message"]
    assert net.connects == []
    assert_never_connected(listener)


def test_ssrf_guard_dials_the_vetted_address_without_a_second_lookup(net, listener):
    port = listener.getsockname()[1]
    net.answer("public.test", ["93.184.216.34"], ["127.0.0.1"])  # rebinds after one lookup
    result = send(f"http://public.test:{port}/hook", BODY, {}, GUARDED)
    assert_payload(result, "connection_refused")  # the test network refused the public dial
    assert net.lookups == ["public.test"]
    assert net.connects == [("93.184.216.34", port)]
    assert_never_connected(listener)


def test_one_connect_timeout_covers_every_address_of_a_host(net):
    """Three addresses that never answer: the send gives up after one connect timeout,
    not three (the lease's send cutoff allows for one)."""
    addresses = ["93.184.216.34", "93.184.216.35", "93.184.216.36"]
    net.silent = frozenset(addresses)
    net.answer("silent.test", addresses)
    started = time.monotonic()
    result = send("http://silent.test/hook", BODY, {}, GUARDED)
    elapsed = time.monotonic() - started
    assert result.success is False and result.error is not None
    assert result.error["kind"] == "timeout", result.error
    assert elapsed < GUARDED.connect_timeout + 0.5, elapsed
    assert 1 <= len(net.connects) <= len(addresses)


def test_ssrf_guard_reports_a_name_that_does_not_resolve_as_dns(net):
    net.answer("missing.test", [])
    assert_payload(send("http://missing.test/hook", BODY, {}, GUARDED), "dns")


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 2  # the sender's pool keeps the connection open: end this thread anyway
    server: _KeepAliveServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.served.append((self.client_address[1], self.headers["Host"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _KeepAliveServer(ThreadingHTTPServer):
    daemon_threads = True
    served: list[tuple[int, str]]  # (client port, Host header) per request


@pytest.fixture
def unchecked_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Routed "public" addresses really land on loopback, which the post-connect peer check
    # (defence in depth) refuses; these tests are about what the guard dials.
    monkeypatch.setattr(dial, "_check_peer", lambda sock, allow_private: None)


def test_guarded_send_pools_per_host_and_keeps_the_host_name(net, unchecked_peer):
    server = _KeepAliveServer(("127.0.0.1", 0), _KeepAliveHandler)
    server.served = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    port = 8443
    net.answer("a.test", ["93.184.216.34"])
    net.answer("b.test", ["93.184.216.35"])
    for ip in ("93.184.216.34", "93.184.216.35"):
        net.routes[(ip, port)] = ("127.0.0.1", server.server_address[1])
    try:
        results = [send(f"http://{host}:{port}/hook", BODY, {}, GUARDED)
                   for host in ("a.test", "a.test", "b.test")]
    finally:
        server.shutdown()
        server.server_close()
    assert [r.success for r in results] == [True, True, True]
    assert net.connects == [("93.184.216.34", port), ("93.184.216.35", port)]
    [(a1, host1), (a2, host2), (b, host3)] = server.served
    assert (host1, host2, host3) == (f"a.test:{port}", f"a.test:{port}", f"b.test:{port}")
    assert a1 == a2 != b  # a.test's connection reused, b.test on its own


def test_guarded_https_still_names_the_host_in_sni(net, unchecked_peer, listener):
    """Dialled at the vetted address, TLS still asks for (and verifies) the host name."""
    listener.settimeout(2.0)
    net.answer("secure.test", ["93.184.216.34"])
    net.routes[("93.184.216.34", 443)] = ("127.0.0.1", listener.getsockname()[1])
    hello: list[bytes] = []

    def read_client_hello() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(2.0)
            hello.append(conn.recv(65536))

    thread = threading.Thread(target=read_client_hello, daemon=True)
    thread.start()
    result = send("https://secure.test/hook", BODY, {}, GUARDED)
    thread.join(3.0)
    assert result.success is False  # the listener hung up instead of answering
    assert net.connects == [("93.184.216.34", 443)]
    [client_hello] = hello
    assert b"secure.test" in client_hello  # the SNI extension, sent in the clear


def test_guarded_send_keeps_the_total_deadline(net, unchecked_peer, receiver):
    """The vetted socket is the one the deadline watchdog shuts down."""
    receiver.always("/slow-headers", rx.trickle_headers(0.05))
    net.answer("slow.test", ["93.184.216.34"])
    net.routes[("93.184.216.34", 80)] = ("127.0.0.1", receiver.port)
    start = time.monotonic()
    result = send("http://slow.test/slow-headers", BODY, {}, GUARDED)
    assert time.monotonic() - start < GUARDED.total_timeout + 0.5
    assert_payload(result, "timeout")
    assert net.connects == [("93.184.216.34", 80)]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///nohost", "not a url"])
def test_invalid_url(url):
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "invalid_url")


@pytest.mark.parametrize("code", [200, 500])
def test_huge_response_body_is_capped(receiver, code):
    url = receiver.always("/huge", rx.huge(5 * 1024 * 1024, code))
    start = time.monotonic()
    result = send(url, BODY, {}, CONFIG)
    assert time.monotonic() - start < CONFIG.total_timeout
    assert result.success is (code == 200)
    assert result.status_code == code
    assert result.body is not None
    assert len(result.body) == CONFIG.max_response_bytes


def test_huge_redirect_body_is_capped(receiver):
    # requests' own redirect handling would read a 3xx body in full, uncapped.
    url = receiver.always("/huge-redirect",
                          rx.huge(20 * 1024 * 1024, 302, {"Location": "/elsewhere"}))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "redirect", 302)
    assert result.body is not None
    assert len(result.body) == CONFIG.max_response_bytes
    assert [r.path for r in receiver.requests()] == ["/huge-redirect"]


def test_retry_after_seconds(receiver):
    url = receiver.always("/busy", rx.retry_after("120", 429))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "http_status", 429)
    assert result.retry_after == 120.0


def test_retry_after_http_date(receiver):
    when = datetime.now(UTC) + timedelta(seconds=90)
    value = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    url = receiver.always("/down", rx.retry_after(value, 503))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "http_status", 503)
    assert result.retry_after is not None
    assert 85 <= result.retry_after <= 91


def test_retry_after_ignored_on_other_statuses(receiver):
    url = receiver.always("/err", rx.retry_after("120", 500))
    assert send(url, BODY, {}, CONFIG).retry_after is None


def test_sequential_sends_reuse_nothing_stale(receiver):
    """Many sends in a row on one thread's pooled session all go through."""
    url = receiver.always("/many", rx.ok())
    results = [send(url, BODY, {"webhook-id": f"m{i}"}, CONFIG) for i in range(20)]
    assert all(r.success for r in results)
    assert [r.headers["webhook-id"] for r in receiver.requests("/many")] == [
        f"m{i}" for i in range(20)]


def test_parse_retry_after():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:00 GMT", now) == 60.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # past: no wait
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("\u00b2", now) is None  # a digit to str.isdigit, not a number
    assert parse_retry_after("9" * 40, now) is None


def test_parse_retry_after_is_bounded():
    """However long a receiver asks for, the wait stays within datetime arithmetic."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("999999999999", now) == sender.MAX_RETRY_AFTER
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) == sender.MAX_RETRY_AFTER
    assert now + timedelta(seconds=sender.MAX_RETRY_AFTER) > now
