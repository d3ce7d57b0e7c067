"""A real HTTP receiver on 127.0.0.1 for the tests: records every request and behaves as
programmed, per path.

Each path gets a script: a list of behaviours used one per request, then a default that
repeats (``ok()`` unless told otherwise). Everything is bounded: the server listens on
loopback only, request bodies are read up to ``MAX_BODY``, at most ``MAX_REQUESTS`` are
recorded, and sleeps are capped and end at once when the server stops.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1024 * 1024
MAX_REQUESTS = 10_000
MAX_SLEEP = 15.0


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() on arrival
    received_at: datetime


# A behaviour writes the response (or does something nastier) for one request.
Behaviour = Callable[["_Handler", "Receiver"], None]


def _respond(handler: _Handler, status: int, body: bytes = b"",
             headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if body:
        handler.wfile.write(body)


def ok(status: int = 200, body: bytes = b"ok") -> Behaviour:
    def behaviour(handler: _Handler, _receiver: Receiver) -> None:
        _respond(handler, status, body)

    return behaviour


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Behaviour:
    def behaviour(handler: _Handler, _receiver: Receiver) -> None:
        _respond(handler, code, body or f"status {code}".encode(), headers)

    return behaviour


def redirect(location: str, code: int = 301) -> Behaviour:
    return status(code, b"moved", {"Location": location})


def retry_after(value: str, code: int = 429) -> Behaviour:
    return status(code, b"slow down", {"Retry-After": value})


def sleep(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Wait (at most MAX_SLEEP, less if the server stops), then behave as ``then``."""

    def behaviour(handler: _Handler, receiver: Receiver) -> None:
        receiver._stopping.wait(min(seconds, MAX_SLEEP))
        with contextlib.suppress(OSError):  # the client gave up waiting, as intended
            (then or ok())(handler, receiver)

    return behaviour


def held(release: threading.Event, then: Behaviour | None = None) -> Behaviour:
    """Hold the request until the test sets ``release`` (at most MAX_SLEEP, less if the
    server stops), then behave as ``then``: in flight for exactly as long as needed."""

    def behaviour(handler: _Handler, receiver: Receiver) -> None:
        deadline = time.monotonic() + MAX_SLEEP
        while not release.wait(0.05):
            if receiver._stopping.is_set() or time.monotonic() > deadline:
                break
        with contextlib.suppress(OSError):
            (then or ok())(handler, receiver)

    return behaviour


def reset() -> Behaviour:
    """Close the connection with a TCP RST instead of answering."""

    def behaviour(handler: _Handler, _receiver: Receiver) -> None:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True

    return behaviour


def huge(size: int, code: int = 200, headers: dict[str, str] | None = None) -> Behaviour:
    """Answer with ``size`` bytes of body; the client is expected to stop reading early."""

    def behaviour(handler: _Handler, _receiver: Receiver) -> None:
        handler.send_response(code)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < size:
                n = min(len(chunk), size - sent)
                handler.wfile.write(chunk[:n])
                sent += n
        except OSError:
            pass  # client closed after its cap

    return behaviour


def trickle(total: int, interval: float, code: int = 200,
            headers: dict[str, str] | None = None) -> Behaviour:
    """Send headers at once, then the body one byte every ``interval`` seconds."""

    def behaviour(handler: _Handler, receiver: Receiver) -> None:
        handler.send_response(code)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        handler.wfile.flush()
        deadline = time.monotonic() + MAX_SLEEP
        try:
            for _ in range(total):
                if receiver._stopping.wait(interval) or time.monotonic() > deadline:
                    return
                handler.wfile.write(b"x")
                handler.wfile.flush()
        except OSError:
            pass

    return behaviour


def trickle_headers(interval: float, count: int = 200) -> Behaviour:
    """Send the status line, then one header byte every ``interval`` seconds, never ending
    the headers: only a total deadline stops a client waiting for them."""

    def behaviour(handler: _Handler, receiver: Receiver) -> None:
        deadline = time.monotonic() + MAX_SLEEP
        try:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * count:
                handler.wfile.write(bytes([byte]))
                if receiver._stopping.wait(interval) or time.monotonic() > deadline:
                    return
        except OSError:
            pass  # the client gave up, as intended
        handler.close_connection = True

    return behaviour


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive surprises

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)) if length else b""
        path = self.path
        behaviour = receiver._record_and_pick(Recorded(
            method=self.command,
            path=path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
            received_at=datetime.now(UTC),
        ))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            behaviour(self, receiver)

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # batched deliveries open several connections at once
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and aborted clients are part of the tests


@dataclass
class _Script:
    steps: list[Behaviour]
    then: Behaviour
    served: int = 0


@dataclass
class Receiver:
    server: _Server = field(init=False)
    _thread: threading.Thread = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: list[Recorded] = field(default_factory=list)
    _scripts: dict[str, _Script] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.receiver = self
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def program(self, path: str, steps: Sequence[Behaviour] = (),
                then: Behaviour | None = None) -> str:
        """Script ``path``: ``steps`` for the first requests, then ``then`` forever."""
        with self._lock:
            self._scripts[path] = _Script(list(steps), then or ok())
        return self.url(path)

    def fail_then_succeed(self, path: str, failures: int, code: int = 500) -> str:
        return self.program(path, [status(code)] * failures, ok())

    def always(self, path: str, behaviour: Behaviour) -> str:
        return self.program(path, (), behaviour)

    def _record_and_pick(self, recorded: Recorded) -> Behaviour:
        with self._lock:
            if len(self._requests) < MAX_REQUESTS:
                self._requests.append(recorded)
            script = self._scripts.get(recorded.path)
            if script is None:
                behaviour = ok()
            else:
                step = script.served
                script.served += 1
                behaviour = script.steps[step] if step < len(script.steps) else script.then
            self._changed.notify_all()
        return behaviour

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None,
                 timeout: float = 10.0) -> list[Recorded]:
        """Block until ``count`` requests (to ``path``) arrived; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self._requests if path is None or r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver got {len(got)} request(s) to {path or 'any path'} "
                        f"within {timeout}s, expected {count}")
                self._changed.wait(left)

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
