"""The reference most teams write: one plain Celery task per webhook.

Prefork, 2 processes, Redis broker, no database at all: the task signs the body
(Standard Webhooks HMAC), POSTs it with a per-process ``requests.Session`` and lets
``autoretry_for`` retry failures. To know when the last one is done without a database,
each task stamps Redis: ``first`` (SET NX at the start), ``done`` (INCR) and ``last``
(the end time).

Worker: ``celery -A bench.plain_celery worker --pool prefork -c 2 -Q bench.plain``, with
``BENCH_PLAIN_BROKER`` set to the bench's Redis index.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from typing import Any

import redis
import requests
from celery import Celery

QUEUE = "bench.plain"
KEY_FIRST = "bench:plain:first"
KEY_LAST = "bench:plain:last"
KEY_DONE = "bench:plain:done"
SECRET = base64.b64encode(b"bench-plain-celery-secret-32-byt").decode()

BROKER = os.environ.get("BENCH_PLAIN_BROKER", "redis://127.0.0.1:6379/15")
# Where the progress counters go: the broker itself, unless it is RabbitMQ (bench.rabbitmq).
PROGRESS = os.environ.get("BENCH_PLAIN_PROGRESS", BROKER)
app = Celery("bench_plain", broker=BROKER)
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE,
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)

_session: requests.Session | None = None
_redis: redis.Redis | None = None


def _clients() -> tuple[requests.Session, redis.Redis]:
    global _session, _redis
    if _session is None or _redis is None:
        _session = requests.Session()
        _redis = redis.Redis.from_url(PROGRESS)
    return _session, _redis


def sign(msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(base64.b64decode(SECRET), f"{msg_id}.{timestamp}.".encode() + body,
                      hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@app.task(name="bench.plain.deliver", autoretry_for=(requests.RequestException,),
          retry_backoff=True, max_retries=5)
def deliver(url: str, msg_id: str, body: str) -> None:
    session, stamps = _clients()
    stamps.set(KEY_FIRST, repr(time.time()), nx=True)
    data = body.encode()
    now = int(time.time())
    response = session.post(url, data=data, timeout=(5, 15), headers={
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(msg_id, now, data),
    })
    response.raise_for_status()
    pipe = stamps.pipeline()
    pipe.incr(KEY_DONE)
    pipe.set(KEY_LAST, repr(time.time()))
    pipe.execute()


def enqueue(url: str, bodies: list[tuple[str, str]]) -> None:
    """Send one message per webhook (the bench process, before the worker starts)."""
    with app.producer_or_acquire() as producer:
        for msg_id, body in bodies:
            deliver.apply_async(args=[url, msg_id, body], queue=QUEUE, producer=producer)


def progress(client: Any) -> tuple[int, float | None, float | None]:
    done, first, last = client.mget(KEY_DONE, KEY_FIRST, KEY_LAST)
    return (int(done or 0), float(first) if first else None, float(last) if last else None)
