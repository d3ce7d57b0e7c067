"""The health of the worker fleet, as the broker sees it: how many workers answer, and
how long the oldest message a worker took is waiting for its acknowledgement.

Read by ``/readyz`` and ``deliverer stats``. Every call is bounded (a failed connection
is tried once, a ping waits ``timeout`` seconds), so a broker that is down makes them
report ``None``, never hang.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from deliverer.broker import queues

log = logging.getLogger(__name__)

PING_TIMEOUT = 1.0  # seconds a ping waits for the workers' replies
UNACKED_SCAN = 1000  # oldest unacknowledged messages read (Redis), to find each queue's


@dataclass(frozen=True)
class Fleet:
    live_workers: int | None  # None: the broker cannot carry a ping, or is down
    # Seconds the oldest unacknowledged message of each queue has been with a worker;
    # None where the broker cannot tell (RabbitMQ without its management API, the
    # embedded broker), or is down.
    oldest_unacked_seconds: dict[str, float | None] | None

    def as_dict(self) -> dict[str, Any]:
        return {"liveWorkers": self.live_workers,
                "oldestUnackedSeconds": self.oldest_unacked_seconds}


def _broker_kind(celery_app: Any) -> str:
    return str(celery_app.conf.broker_url or "").split(":", 1)[0]


def live_workers(celery_app: Any, timeout: float = PING_TIMEOUT) -> int | None:
    """Workers answering Celery's ping within ``timeout``."""
    if _broker_kind(celery_app).startswith("sqla"):
        return None  # kombu's SQLAlchemy transport carries no broadcast between processes
    try:
        # A pooled connection: closing a fresh one after a ping waited for the reply
        # consumer's BRPOP on Redis (its 1 s timeout: 0.7 s a probe).
        with celery_app.pool.acquire(block=True, timeout=0.5) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            return len(celery_app.control.ping(timeout=timeout, connection=conn) or [])
    except Exception as exc:
        log.warning("broker unreachable for the worker ping: %s", exc)
        return None


def oldest_unacked_seconds(celery_app: Any, names: tuple[str, ...] = queues.ALL,
                           now: float | None = None) -> dict[str, float | None] | None:
    """Redis: kombu keeps each message a worker holds in ``unacked``, indexed by the time
    it was handed out (``unacked_index``); the oldest ``UNACKED_SCAN`` are read to find
    each queue's oldest. A queue with nothing held reads 0."""
    if not _broker_kind(celery_app).startswith("redis"):
        return None
    import json

    now = time.time() if now is None else now
    result: dict[str, float | None] = {name: 0.0 for name in names}
    try:
        with celery_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            client = channel.client
            oldest = client.zrange(channel.unacked_index_key, 0, UNACKED_SCAN - 1,
                                   withscores=True)
            tags = [tag for tag, _ in oldest]
            payloads = client.hmget(channel.unacked_key, tags) if tags else []
            for (_, score), payload in zip(oldest, payloads, strict=True):
                if payload is None:
                    continue  # acknowledged meanwhile
                _message, _exchange, routing_key = json.loads(payload)
                if routing_key in result and not result[routing_key]:
                    result[routing_key] = round(max(0.0, now - float(score)), 3)
    except Exception as exc:
        log.warning("broker unreachable for unacknowledged messages: %s", exc)
        return {name: None for name in names}
    return result


def collect(celery_app: Any, timeout: float = PING_TIMEOUT) -> Fleet:
    return Fleet(live_workers(celery_app, timeout), oldest_unacked_seconds(celery_app))
