"""The sender: one HTTP POST of a webhook, with its outcome classified.

It never raises for a network problem: every outcome, good or bad, comes back as a
``SendResult`` so the caller can record it. Redirects are not followed (a 3xx is a
failure), the response body is read up to a cap, and a total deadline bounds the whole
exchange, since ``requests``' own timeout applies to each socket operation separately.
"""

from __future__ import annotations

import contextlib
import email.utils
import heapq
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.connection import allowed_gai_family

from deliverer.delivery import netguard
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.errors import UnsafeUrl


class BlockedAddress(Exception):
    """The host resolves to a forbidden address; raised past urllib3's retry logic."""


def _check_peer(sock: socket.socket) -> None:
    peer = sock.getpeername()[0]
    try:
        netguard.check_address(peer, allow_private=False)
    except UnsafeUrl as exc:
        sock.close()
        raise BlockedAddress(str(exc)) from exc


def _connect_first(candidates: Sequence[netguard.AddrInfo], conn: HTTPConnection,
                   ) -> socket.socket:
    """urllib3's create_connection, over addresses already resolved and vetted, with one
    connect timeout for them all: per address, a host with several unreachable ones
    would hold the send for that many timeouts, which the lease cutoff does not allow
    for (batch.send_cutoff counts one connect timeout)."""
    error: OSError | None = None
    budget = conn.timeout if isinstance(conn.timeout, int | float) else None
    deadline = None if budget is None else time.monotonic() + budget
    for family, kind, proto, _canonname, sockaddr in candidates:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("connect timeout spent on earlier addresses")
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            if deadline is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            elif conn.timeout is None:
                sock.settimeout(None)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("getaddrinfo returned no address")


def _dial_vetted(conn: HTTPConnection) -> socket.socket:
    """A connected socket to an address of ``conn.host`` the SSRF guard accepted.

    Checking only the peer after connect() still sent the SYN to an internal address, and
    whether that port refused or accepted showed in the attempt's error, which merchants
    read: a host rebinding to internal addresses could scan ports. Here the name is
    resolved once, every answer is checked before any socket exists, and only those
    sockaddrs are dialled, leaving no second lookup for a rebinding server to answer.
    TLS SNI, certificate checks and the Host header still use ``conn.host``.
    """
    try:
        candidates = netguard.vetted_addresses(conn._dns_host, conn.port, allowed_gai_family())
    except UnsafeUrl as exc:
        raise BlockedAddress(str(exc)) from exc
    except socket.gaierror as exc:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
    except UnicodeError as exc:  # as urllib3: a label IDNA cannot encode
        raise urllib3.exceptions.LocationParseError(conn.host) from exc
    # The same wrapping as urllib3's own _new_conn, so classify_exception and urllib3's
    # retry logic see the exceptions they expect.
    try:
        sock = _connect_first(candidates, conn)
    except TimeoutError as exc:
        raise urllib3.exceptions.ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})",
        ) from exc
    except OSError as exc:
        raise urllib3.exceptions.NewConnectionError(
            conn, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", conn, conn.host, conn.port)
    _check_peer(sock)  # defence in depth: cheap, and catches a dial we did not vet
    return sock


class _Watch:
    """The socket of the request in flight on this thread, for the deadline watchdog."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.fired = False
        self.lock = threading.Lock()

    def fire(self) -> None:
        # requests' timeouts are per socket operation: a receiver trickling its status
        # line or headers a byte at a time would hold the sender indefinitely. Shutting
        # the socket down ends whatever read is blocked on it.
        with self.lock:
            self.fired = True
            if self.sock is not None:
                with contextlib.suppress(OSError):  # already closed: nothing to stop
                    self.sock.shutdown(socket.SHUT_RDWR)


_watch_local = threading.local()


class _Watchdog:
    """One thread firing the deadlines of every send in the process (no thread per send)."""

    # Deadlines are seconds long. Waking at most this often lets one wake-up retire every
    # deadline passed meanwhile (nearly all of sends that ended long ago), instead of one
    # wake-up per send: at a thousand sends a second, the GIL noticed.
    GRANULARITY = 0.05

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._cancelled: set[int] = set()
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, watch: _Watch) -> int:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="deliverer-deadlines",
                                                daemon=True)
                self._thread.start()
            self._next += 1
            heapq.heappush(self._heap, (deadline, self._next, watch))
            if self._heap[0][1] == self._next:  # earlier than what the thread waits for
                self._cond.notify()
            return self._next

    def disarm(self, ticket: int) -> None:
        with self._cond:
            self._cancelled.add(ticket)

    def _run(self) -> None:
        while True:
            due: list[_Watch] = []
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _deadline, ticket, watch = heapq.heappop(self._heap)
                    if ticket in self._cancelled:
                        self._cancelled.discard(ticket)
                    else:
                        due.append(watch)
                if not due and self._heap:
                    self._cond.wait(max(self._heap[0][0] - now, self.GRANULARITY))
            for watch in due:
                watch.fire()


_WATCHDOG = _Watchdog()


def _watch_socket(sock: socket.socket | None) -> None:
    watch: _Watch | None = getattr(_watch_local, "watch", None)
    if watch is not None and sock is not None:
        with watch.lock:
            watch.sock = sock
            if watch.fired:
                watch.fire()


class _WatchedMixin:
    """Hands each connection's socket to the watchdog; guarded ones dial vetted addresses."""

    guarded = False
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = (
            _dial_vetted(cast(HTTPConnection, self)) if self.guarded
            else super()._new_conn())  # type: ignore[misc]
        _watch_socket(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_socket(self.sock)  # a reused keep-alive connection
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnection(_WatchedHTTPConnection):
    guarded = True


class _GuardedHTTPSConnection(_WatchedHTTPSConnection):
    guarded = True


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class WatchedAdapter(HTTPAdapter):
    """Lets the deadline watchdog find the socket of the request in flight."""

    pools: dict[str, type[HTTPConnectionPool]] = {
        "http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.pools)


class GuardedAdapter(WatchedAdapter):
    """Also dials only addresses the SSRF guard vetted (pools stay keyed by host name, and
    every connection in a host's pool was dialled to a vetted address of that host)."""

    pools = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


@dataclass(frozen=True)
class SendResult:
    started_at: datetime
    duration_ms: int
    success: bool
    status_code: int | None = None
    body: str | None = None
    error: dict[str, Any] | None = None
    # Seconds the receiver asked us to wait (Retry-After on 429/503).
    retry_after: float | None = None


@dataclass(frozen=True)
class SenderConfig:
    connect_timeout: float = 5.0
    total_timeout: float = 15.0
    max_response_bytes: int = 20 * 1024
    allow_private_urls: bool = False
    user_agent: str = "deliverer/0.1"


_local = threading.local()


def _session(config: SenderConfig) -> requests.Session:
    """One pooled session per thread (requests.Session is not documented thread-safe)."""
    key = (config.allow_private_urls,)
    sessions: dict[tuple[bool], requests.Session] = getattr(_local, "sessions", {})
    _local.sessions = sessions
    session = sessions.get(key)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # no proxies from the environment for webhook traffic
        adapter: HTTPAdapter = (
            WatchedAdapter(pool_connections=64, pool_maxsize=8, max_retries=0)
            if config.allow_private_urls
            else GuardedAdapter(pool_connections=64, pool_maxsize=8, max_retries=0)
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        sessions[key] = session
    return session


_DELTA_SECONDS = re.compile(r"[0-9]{1,20}")
# Longer than any retry cycle (30 days), which the recorder caps a wait to anyway. Without
# a bound, "Retry-After: 999999999999" overflowed the datetime arithmetic in the recorder:
# the attempt was never written and the webhook was POSTed again at every lease expiry.
MAX_RETRY_AFTER = 31 * 24 * 3600.0


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date; None when unreadable."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):  # not str.isdigit: "²" is a digit, not a number
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.append(current)
        for nxt in (current.__cause__, current.__context__, *current.args):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return seen


def classify_exception(exc: BaseException) -> tuple[FailureKind, str]:
    chain = _chain(exc)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    if has(BlockedAddress, UnsafeUrl):
        return FailureKind.BLOCKED, "Connection refused by the SSRF guard: " + str(exc)
    if has(requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
           requests.exceptions.InvalidSchema, urllib3.exceptions.LocationParseError):
        return FailureKind.INVALID_URL, f"Invalid webhook URL: {exc}"
    if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
        return FailureKind.DNS, "DNS resolution failed for the webhook host"
    if has(requests.exceptions.SSLError, ssl.SSLError):
        return FailureKind.TLS, f"TLS handshake failed: {exc}"
    if has(requests.exceptions.ConnectTimeout):
        return FailureKind.TIMEOUT, "Timed out connecting to the webhook URL"
    if has(requests.exceptions.Timeout, socket.timeout, TimeoutError):
        return FailureKind.TIMEOUT, "Timed out waiting for the webhook response"
    if has(ConnectionRefusedError):
        return FailureKind.CONNECTION_REFUSED, "Connection refused by the webhook host"
    if has(ConnectionResetError, BrokenPipeError, urllib3.exceptions.ProtocolError,
           requests.exceptions.ChunkedEncodingError):
        return FailureKind.CONNECTION_RESET, "Connection closed by the webhook host"
    return FailureKind.CONNECTION_ERROR, f"Could not reach the webhook URL: {type(exc).__name__}"


class DeadlineExceeded(Exception):
    pass


def _response_socket(raw: Any) -> socket.socket | None:
    """The socket a streamed urllib3 response reads from, if it can be found.

    A keep-alive connection still holds it; for a response that closes the connection,
    http.client handed it over to the response's file object.
    """
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _read_capped(response: requests.Response, cap: int, deadline: float) -> bytes:
    # iter_content() blocks until a whole chunk (or EOF) arrived, and each socket read may
    # wait a full read timeout: a receiver trickling bytes held the sender for as long as it
    # liked. read1() returns whatever arrived, and every wait ends at the deadline.
    raw = response.raw
    sock = _response_socket(raw)
    read1 = getattr(raw, "read1", None)
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded
        if sock is not None and sock.fileno() != -1:  # closed once the body is complete
            sock.settimeout(remaining)
        try:
            chunk = read1(4096, decode_content=True) if read1 else raw.read(4096,
                                                                            decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise DeadlineExceeded from exc
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:cap]


def send(
    url: str,
    body: bytes,
    headers: dict[str, str],
    config: SenderConfig,
) -> SendResult:
    """POST ``body`` to ``url`` once. Never raises for network or HTTP failures."""
    started_at = datetime.now(UTC)
    start = time.monotonic()
    deadline = start + config.total_timeout
    watch = _Watch()

    def elapsed_ms() -> int:
        return int((time.monotonic() - start) * 1000)

    def failure(kind: FailureKind, message: str, status: int | None = None,
                body_text: str | None = None, retry_after: float | None = None) -> SendResult:
        if watch.fired and kind is not FailureKind.TIMEOUT:
            kind, message = FailureKind.TIMEOUT, "No complete response within the deadline"
        return SendResult(
            started_at=started_at, duration_ms=elapsed_ms(), success=False,
            status_code=status, body=body_text, error=error_payload(kind, message, status),
            retry_after=retry_after,
        )

    try:
        netguard.check_url_form(url)
    except UnsafeUrl as exc:
        return failure(FailureKind.INVALID_URL, exc.message)

    _watch_local.watch = watch
    ticket = _WATCHDOG.arm(deadline, watch)
    try:
        all_headers = {
            "Content-Type": "application/json",
            "Accept": "*/*",
            "User-Agent": config.user_agent,
            **headers,
        }
        try:
            session = _session(config)
            # Prepared directly, not by Session.prepare_request: no cookie jar to merge
            # (webhooks carry none) and none of the session's default headers, so no
            # Accept-Encoding either: a receiver cannot send a compressed body that
            # inflates past the response cap.
            prepared = requests.PreparedRequest()
            prepared.prepare(method="POST", url=url, headers=all_headers, data=body)
            # Straight to the adapter: Session.send(allow_redirects=False) still reads a 3xx
            # body in full (to compute Response.next), with no size cap and no deadline.
            response = session.get_adapter(url).send(
                prepared,
                stream=True,
                timeout=(config.connect_timeout, config.total_timeout),
                verify=True,
                cert=None,
                proxies={},
            )
        except Exception as exc:  # every failure becomes a recorded attempt, none escape
            kind, message = classify_exception(exc)
            return failure(kind, message)

        with response:
            try:
                raw = _read_capped(response, config.max_response_bytes, deadline)
            except DeadlineExceeded:
                return failure(FailureKind.TIMEOUT,
                               "Response body not received within the deadline",
                               response.status_code)
            except Exception as exc:
                kind, message = classify_exception(exc)
                return failure(kind, message, response.status_code)
        text = raw.decode("utf-8", errors="replace")
        status = response.status_code
        if 200 <= status < 300:
            return SendResult(started_at=started_at, duration_ms=elapsed_ms(), success=True,
                              status_code=status, body=text)
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            return failure(FailureKind.REDIRECT,
                           f"HTTP {status} redirect to {location!r} (redirects are not followed)",
                           status, text)
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("Retry-After"), started_at)
        return failure(FailureKind.HTTP_STATUS, f"HTTP {status} {response.reason or ''}".strip(),
                       status, text, retry_after)
    finally:
        _WATCHDOG.disarm(ticket)
        _watch_local.watch = None
