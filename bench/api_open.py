"""The API benchmark's open-loop run: manual retries offered at a constant rate.

wrk keeps 50 requests in flight and sends the next one when an answer arrives (a closed
loop): when the server slows down, so does the offered load, and the slow answers it
would have caused are never measured. Merchants do not wait for each other. Here request
``i`` is due at ``start + i / rate`` whatever happened before; a pool of keep-alive
connections sends each as soon as it is due (or as soon as a connection is free, if none
is), and its latency is counted from when it was due, not from when it went out, so a
server that falls behind shows it in the percentiles.
"""

from __future__ import annotations

import http.client
import queue
import threading
import time
from collections import Counter
from typing import Any

from bench.report import percentile

CONNECTIONS = 64


def request_once(conn: http.client.HTTPConnection, port: int, method: str, path: str,
                 headers: dict[str, str], seen: Counter[str]) -> http.client.HTTPConnection:
    """One request on a keep-alive connection, its status counted in ``seen``; returns
    the connection to go on with (a new one after a socket error, counted as "error")."""
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        response.read()
        seen[str(response.status)] += 1
    except (OSError, http.client.HTTPException):
        seen["error"] += 1
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    return conn


def open_loop(port: int, pairs: list[tuple[str, str]], rate: float,
              seconds: float) -> dict[str, Any]:
    """Offer ``rate`` manual retries a second for ``seconds``, walking ``pairs`` (API key,
    notification id) once each, in order; latency percentiles from each request's due
    time."""
    count = min(len(pairs), int(rate * seconds))
    due: queue.Queue[tuple[float, str, str] | None] = queue.Queue()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    late_starts: list[float] = []
    lock = threading.Lock()

    def sender() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        late: list[float] = []
        seen: Counter[str] = Counter()
        while (item := due.get()) is not None:
            at, key, nid = item
            wait = at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            late.append((time.perf_counter() - at) * 1000)
            conn = request_once(conn, port, "POST",
                                f"/api/partner/v2/webhook-notifications/{nid}/retry",
                                {"X-Api-Key": key, "Content-Length": "0"}, seen)
            mine.append((time.perf_counter() - at) * 1000)
        conn.close()
        with lock:
            latencies.extend(mine)
            late_starts.extend(late)
            statuses.update(seen)

    pool = [threading.Thread(target=sender, daemon=True) for _ in range(CONNECTIONS)]
    for thread in pool:
        thread.start()
    start = time.perf_counter() + 0.2
    for i in range(count):
        key, nid = pairs[i]
        due.put((start + i / rate, key, nid))
    for _ in pool:
        due.put(None)
    for thread in pool:
        thread.join(timeout=seconds + 60)
    elapsed = max(1e-9, time.perf_counter() - start)
    return {"client": f"open loop, {CONNECTIONS} keep-alive connections",
            "offered_per_s": rate, "requests": len(latencies),
            "per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies, default=0.0),
            "send_late_p99_ms": percentile(late_starts, 99),
            "errors": {"client": statuses.pop("error", 0)}, "statuses": dict(statuses)}
