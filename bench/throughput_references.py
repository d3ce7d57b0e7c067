"""What the throughput benchmark compares deliverer with, measured on the same machine
and nginx, POSTing the same bodies: the client limit (a ``requests.Session`` POST loop
in 2 processes, one per core: how fast a client alone can POST) and the plain-Celery
reference (``bench.plain_celery``: the one task per webhook most teams write, prefork
-c 2).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from bench import plain_celery
from bench.context import PAYLOAD, Ctx
from bench.processes import BenchError, wait_until


def sample_body(i: int) -> str:
    envelope = {"data": {**PAYLOAD, "sequence": i}, "id": f"evt_{i:08d}",
                "reference": f"TXN-{i:08d}", "timestamp": "2026-11-23T12:00:00Z",
                "type": "transaction.paid"}
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True)


# ------------------------------------------------------------------ the client limit

def _loop(url: str, count: int, offset: int, start_at: float) -> tuple[float, float, int]:
    import requests

    session = requests.Session()
    bodies = [sample_body(offset + i).encode() for i in range(count)]
    while time.time() < start_at:
        time.sleep(0.001)
    ok = 0
    begin = time.time()
    for i, body in enumerate(bodies):
        msg_id = f"msg_{offset + i}"
        response = session.post(url, data=body, timeout=(5, 15), headers={
            "Content-Type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": plain_celery.sign(msg_id, int(time.time()), body)})
        ok += response.status_code == 200
    return begin, time.time(), ok


def requests_loop(url: str, n: int, processes: int = 2) -> dict[str, Any]:
    per = n // processes
    start_at = time.time() + 1.5  # all processes spawned and importing done by then
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_loop, url, per, k * per, start_at) for k in range(processes)]
        parts = [f.result(timeout=600) for f in futures]
    begin = min(p[0] for p in parts)
    end = max(p[1] for p in parts)
    ok = sum(p[2] for p in parts)
    if ok != per * processes:
        raise BenchError(f"requests loop: {per * processes - ok} POSTs failed")
    return {"posts": ok, "seconds": end - begin, "per_s": ok / (end - begin),
            "processes": processes}


# ------------------------------------------------------------------ plain Celery

def plain_celery_run(ctx: Ctx, url: str, n: int) -> dict[str, Any]:
    env = ctx.env
    env.flush_redis()
    plain_celery.app.conf.broker_url = env.broker_url
    t0 = time.time()
    plain_celery.enqueue(url, [(f"msg_{i}", sample_body(i)) for i in range(n)])
    enqueue_s = time.time() - t0
    worker = env.procs.start("plain-celery", [
        sys.executable, "-m", "celery", "-A", "bench.plain_celery", "worker",
        "--pool", "prefork", "--concurrency", "2", "-Q", plain_celery.QUEUE,
        "--without-gossip", "--without-mingle", "--loglevel", "WARNING", "-n", "plain@%h",
    ], env.env(BENCH_PLAIN_BROKER=env.broker_url, BENCH_PLAIN_PROGRESS=env.redis_url))
    try:
        def finished() -> bool:
            if not worker.alive():
                raise BenchError(f"plain Celery worker exited:\n{worker.tail()}")
            return plain_celery.progress(env.redis)[0] >= n

        wait_until(finished, max(120.0, n / 20), "the plain Celery worker", interval=0.1)
        done, first, last = plain_celery.progress(env.redis)
    finally:
        env.procs.stop(worker)
    assert first is not None and last is not None
    return {"delivered": done, "seconds": last - first, "per_s": n / (last - first),
            "enqueue_s": round(enqueue_s, 2), "pool": "prefork -c 2"}
