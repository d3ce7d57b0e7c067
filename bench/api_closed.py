"""The API benchmark's closed-loop clients: wrk, or, without wrk on the machine, a Python
thread pool standing in (CONNECTIONS threads, ``http.client``), in the bench process;
the JSON says which client was used.

Either keeps CONNECTIONS requests in flight and sends the next one when an answer
arrives, for a duration: ``GET /healthz`` (mode ``get``) or the manual retry over the
(API key, notification) pairs (mode ``retry``; wrk reads them from a file,
``wrk/load.lua``).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.api_open import request_once
from bench.processes import BenchError
from bench.report import percentile

CONNECTIONS = 50
THREADS = 2
LUA = Path(__file__).parent / "wrk" / "load.lua"


def wrk_run(base_url: str, path: str, duration: float, mode: str, items: Path | None,
            log_dir: Path, tag: str = "") -> dict[str, Any]:
    env = dict(os.environ, BENCH_WRK_MODE=mode, BENCH_WRK_THREADS=str(THREADS))
    if items is not None:
        env["BENCH_WRK_ITEMS"] = str(items)
    argv = ["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{duration:g}s",
            "--timeout", "10s", "--latency", "-s", str(LUA), base_url + path]
    done = subprocess.run(argv, env=env, capture_output=True, text=True,
                          timeout=duration + 60)
    (log_dir / f"wrk-{mode}{tag}.log").write_text(done.stdout + done.stderr)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} "
                         f"{done.stderr[-500:]}")
    data = json.loads(line[len("BENCH_JSON "):])
    seconds = data["duration_us"] / 1e6
    return {"client": f"wrk -t{THREADS} -c{CONNECTIONS}", "requests": data["requests"],
            "per_s": data["requests"] / seconds, "p50_ms": data["p50_us"] / 1000,
            "p90_ms": data["p90_us"] / 1000, "p99_ms": data["p99_us"] / 1000,
            "max_ms": data["max_us"] / 1000, "errors": data["errors"],
            "statuses": data["statuses"]}


def python_run(port: int, duration: float, mode: str,
               pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The stand-in for wrk: CONNECTIONS threads, each a keep-alive http.client loop."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    counter = iter(range(10**9))
    stop_at = time.monotonic() + duration

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        seen: Counter[str] = Counter()
        while time.monotonic() < stop_at:
            if mode == "retry":
                key, nid = pairs[next(counter) % len(pairs)]
                method, path = "POST", f"/api/partner/v2/webhook-notifications/{nid}/retry"
                headers = {"X-Api-Key": key, "Content-Length": "0"}
            else:
                method, path, headers = "GET", "/healthz", {}
            t0 = time.perf_counter()
            conn = request_once(conn, port, method, path, headers, seen)
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)
            statuses.update(seen)

    began = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=duration + 30)
    seconds = time.monotonic() - began
    return {"client": f"Python threads x{CONNECTIONS} (wrk not found)",
            "requests": len(latencies), "per_s": len(latencies) / seconds,
            "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies, default=0.0),
            "errors": {"client": statuses.pop("error", 0)}, "statuses": dict(statuses)}


def drained(base: str) -> None:
    # Requests wrk left in the listen queue when it stopped are still served: wait for
    # them (a /healthz behind them answers), so runs do not overlap.
    import requests

    requests.get(base + "/healthz", timeout=120)
