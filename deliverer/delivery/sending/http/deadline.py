"""The total deadline of one POST: ``requests``' timeouts apply to each socket operation
separately, so a receiver trickling bytes could hold a send for as long as it liked. One
watchdog thread shuts down the socket of every send past its deadline, and the body is
read in pieces that each end at it."""

from __future__ import annotations

import contextlib
import heapq
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import urllib3.exceptions


class Watch:
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


watch_local = threading.local()


class Watchdog:
    """One thread firing the deadlines of every send in the process (no thread per send)."""

    # Deadlines are seconds long. Waking at most this often lets one wake-up retire every
    # deadline passed meanwhile (nearly all of sends that ended long ago), instead of one
    # wake-up per send: at a thousand sends a second, the GIL noticed.
    GRANULARITY = 0.05

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._cancelled: set[int] = set()
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, watch: Watch) -> int:
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
            due: list[Watch] = []
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


WATCHDOG = Watchdog()


def watch_socket(sock: socket.socket | None) -> None:
    watch: Watch | None = getattr(watch_local, "watch", None)
    if watch is not None and sock is not None:
        with watch.lock:
            watch.sock = sock
            if watch.fired:
                watch.fire()


@contextlib.contextmanager
def watching(watch: Watch, deadline: float) -> Iterator[None]:
    """The request this thread makes meanwhile is stopped at ``deadline`` (monotonic)."""
    watch_local.watch = watch
    ticket = WATCHDOG.arm(deadline, watch)
    try:
        yield
    finally:
        WATCHDOG.disarm(ticket)
        watch_local.watch = None


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


def read_capped(response: requests.Response, cap: int, deadline: float) -> bytes:
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
