"""Reference servers of the API benchmark: the manual retry with its batch replaced.

``bench/api.py`` measures the manual retry against ``GET /healthz``. These servers run
the same application, route, authentication check, schema and batching (``deliverer.batching``)
as the real one, but hand each batch to a stand-in instead of
``manual_retry.run_batch``, so the benchmark can say what the retry's own database work
costs, against two floors:

* ``nodb``: no database at all; every request is answered as an accepted retry. What the
  HTTP side of the route costs (request thread, schema, the hand-off to the batch thread).
* ``commit``: one transaction per batch that reads ``SELECT 1`` and commits, then one
  broker message for the batch's notifications, as an accepted batch sends. The least a
  batch that decides anything and enqueues its retries has to do; no rule is checked and
  nothing is written.
* ``raw``: the same, below the project's own stack: one round trip that runs
  ``BEGIN; SELECT 1; COMMIT`` on a psycopg2 connection the batch thread keeps (no pool,
  no ping, no ORM), then one ``LPUSH`` of the batch's ids to Redis (no kombu). The least
  any batch that commits and hands work on can cost, whoever writes it.

Run by gunicorn as the Procfile's web line runs ``api:create_app()``, with
``BENCH_API_FLOOR`` naming the stand-in. Not for anything but the benchmark: it answers
200 to every retry, whatever the notification.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg2
import redis
from flask import Flask
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from api import create_app as create_api
from deliverer.batching import Coalescer
from deliverer.broker.dispatch import enqueue_batch
from deliverer.config import get_settings
from deliverer.db import in_transaction, on_commit
from deliverer.models import Lane, utcnow

ENV = "BENCH_API_FLOOR"

Request = tuple[str, str]  # (API key hash, notification id), as the real batch gets them


def accepted(notification_id: str) -> Mapping[str, Any]:
    """What an accepted retry's batch hands the view: the notification's columns (here
    made up, PENDING again) with its event's type and reference."""
    now = utcnow()
    return {"id": notification_id, "event_id": notification_id, "type": "transaction.paid",
            "reference": "TXN-floor", "status": "PENDING", "url": "http://127.0.0.1/hook",
            "sequence": None, "retry_attempts": 0, "manual_retry_count": 1,
            "attempt_count": 10, "latest_error_payload": None, "next_attempt_at": now,
            "held": False, "cycle_started_at": now, "sent_at": None, "created_at": now,
            "updated_at": now}


def no_database(requests: Sequence[Request]) -> list[Mapping[str, Any]]:
    return [accepted(nid) for _, nid in requests]


def empty_commit(requests: Sequence[Request]) -> list[Mapping[str, Any]]:
    ids = [nid for _, nid in requests]

    def work(session: Session) -> None:
        session.execute(select(1))
        on_commit(session, lambda: enqueue_batch(ids, Lane.MANUAL))

    in_transaction(work)
    return [accepted(nid) for nid in ids]


class _Raw:
    """The ``raw`` floor's connections: the batch thread's own, one per process."""

    pid: int | None = None
    pg: Any = None
    redis: Any = None
    key = "bench-api-floor-raw"  # a list nothing reads; the bench's Redis db is flushed


def raw_commit(requests: Sequence[Request]) -> list[Mapping[str, Any]]:
    ids = [nid for _, nid in requests]
    if _Raw.pid != os.getpid():
        settings = get_settings()
        if not settings.broker_is_redis:
            raise RuntimeError("the raw floor pushes to Redis: CELERY_BROKER_URL must be one")
        url = make_url(settings.database_url).set(drivername="postgresql")
        _Raw.pg = psycopg2.connect(url.render_as_string(hide_password=False))
        _Raw.pg.autocommit = True  # the statement carries its own BEGIN and COMMIT
        _Raw.redis = redis.Redis.from_url(settings.broker_url)
        _Raw.pid = os.getpid()
    with _Raw.pg.cursor() as cursor:
        cursor.execute("BEGIN; SELECT 1; COMMIT")
    _Raw.redis.lpush(_Raw.key, json.dumps(ids))
    return [accepted(nid) for nid in ids]


_RUNS: dict[str, Callable[[Sequence[Request]], list[Mapping[str, Any]]]] = {
    "nodb": no_database, "commit": empty_commit, "raw": raw_commit}
VARIANTS = tuple(_RUNS)


def create_app() -> Flask:
    variant = os.environ.get(ENV, "")
    if variant not in _RUNS:
        raise RuntimeError(f"{ENV} must be one of {', '.join(VARIANTS)}, not {variant!r}")
    app = create_api()
    app.extensions["deliverer_retries"] = Coalescer("retries", _RUNS[variant])
    return app
