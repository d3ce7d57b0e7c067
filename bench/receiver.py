"""A Python webhook receiver for the latency, retry and isolation benchmarks.

Runs as its own process (``python -m bench.receiver``), so the publisher's work in the
bench process does not delay its clock. It stamps ``time.time()`` as soon as a request
line has been read (first byte, to within the parsing of one line), and behaves per path:

* ``/slow/...``: hangs ``--hang`` seconds (past the sender's total timeout), then 200;
* with ``--fail-first K``: the first K requests of each ``webhook-id`` get a 500;
* anything else: 200 at once.

``GET /_records`` returns what it recorded as JSON; ``GET /_count`` how many
(``/_count?prefix=/ok/``: how many under a path prefix). It listens
on 127.0.0.1 only, records at most ``MAX_RECORDS`` requests, and every sleep ends when
the process is told to stop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_RECORDS = 2_000_000
MAX_BODY = 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, port: int, fail_first: int, hang: float) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.fail_first = fail_first
        self.hang = hang
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[str, str, float, int]] = []
        self.seen: dict[str, int] = defaultdict(int)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def parse_request(self) -> bool:
        self.arrived = time.time()  # the request line has just been read
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"ok", ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server = self.server
        if self.path.startswith("/_count"):
            # /_count or /_count?prefix=/ok/ : requests recorded (under a path prefix)
            prefix = self.path.partition("?prefix=")[2]
            with server.lock:
                n = sum(1 for r in server.records if r[1].startswith(prefix))
            self._reply(200, str(n).encode())
        elif self.path == "/_records":
            with server.lock:
                data = json.dumps(server.records).encode()
            self._reply(200, data, "application/json")
        else:
            self._reply(404, b"not found")

    def do_POST(self) -> None:
        server = self.server
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        if length:
            self.rfile.read(length)
        webhook_id = self.headers.get("webhook-id", "")
        status = 200
        if self.path.startswith("/slow/"):
            server.stopping.wait(server.hang)
        elif server.fail_first:
            with server.lock:
                server.seen[webhook_id] += 1
                if server.seen[webhook_id] <= server.fail_first:
                    status = 500
        with server.lock:
            if len(server.records) < MAX_RECORDS:
                server.records.append((webhook_id, self.path, self.arrived, status))
        # The sender may have given up (timeout): that is the point of /slow/.
        with contextlib.suppress(OSError):
            self._reply(status, b"ok" if status == 200 else b"failing on purpose")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--hang", type=float, default=0.0)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    server = _Server(args.port, args.fail_first, min(args.hang, 60.0))

    def stop(*_: Any) -> None:
        server.stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready_file:
        args.ready_file.write_text("ready")
    server.serve_forever(poll_interval=0.2)


class ReceiverClient:
    """Start the receiver as a child process of the bench and read its records."""

    def __init__(self, env: Any, fail_first: int = 0, hang: float = 0.0) -> None:
        import sys

        from bench.processes import free_port, wait_until

        self.port = free_port()
        ready = env.tmp / f"receiver-{self.port}.ready"
        self.proc = env.procs.start(
            "receiver",
            [sys.executable, "-m", "bench.receiver", "--port", str(self.port),
             "--fail-first", str(fail_first), "--hang", str(hang), "--ready-file", str(ready)],
            env.env())
        self._env = env
        wait_until(lambda: ready.exists() and self._count_or_none("") is not None, 15,
                   "the Python receiver to listen")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _count_or_none(self, prefix: str) -> int | None:
        import requests

        try:
            return int(requests.get(self.url(f"/_count?prefix={prefix}"), timeout=2).text)
        except (requests.RequestException, ValueError):
            return None

    def count(self, prefix: str = "") -> int:
        """Requests recorded so far (those whose path starts with ``prefix``)."""
        return self._count_or_none(prefix) or 0

    def records(self) -> list[tuple[str, str, float, int]]:
        import requests

        response = requests.get(self.url("/_records"), timeout=30)
        response.raise_for_status()
        return [tuple(r) for r in response.json()]

    def stop(self) -> None:
        self._env.procs.stop(self.proc, timeout=5)


if __name__ == "__main__":
    main()
