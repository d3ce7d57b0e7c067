"""The SSRF guard: loopback, link-local and rebound names refused before any connect, the
vetted address dialled without a second lookup under one connect timeout, and guarded
sends that still pool per host and name it in SNI within the total deadline."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deliverer.delivery.sending import netguard
from deliverer.delivery.sending.http import dial
from deliverer.delivery.sending.sender import send
from tests.delivery.sender.helpers import BODY, CONFIG, GUARDED, assert_payload
from tests.support import receiver as rx
from tests.support.ports import closed_port

# The sender alone, against loopback servers: no database or broker, nothing that differs
# between backends.
pytestmark = pytest.mark.unit


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
