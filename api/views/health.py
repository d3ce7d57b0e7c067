"""Liveness and readiness probes."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import text

from deliverer.db import get_database
from deliverer.migrate import schema_problem
from deliverer.operations import fleet

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


# The broker check runs in a thread of its own, waited for this long: a broker that
# accepts connections and never answers held a probe for the transport's socket timeout
# (10 s measured on Redis), past a probe's default 1 s. One check at a time per process:
# while one hangs, probes report it instead of starting another.
BROKER_CHECK_WAIT = 0.5
_checker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz-broker")
_checking: dict[int, Future[str]] = {}  # by Celery app (one per process but in tests)
_checking_lock = threading.Lock()


def _check_broker(celery_app: Any) -> str:
    try:
        with celery_app.connection_for_write() as conn:
            # One try: a retry slept 2 s first.
            conn.ensure_connection(max_retries=0, timeout=1)
        return "ok"
    except Exception as exc:  # reported, not raised
        return f"error: {type(exc).__name__}"


def _broker_check(celery_app: Any) -> str:
    with _checking_lock:
        checking = _checking.get(id(celery_app))
        if checking is None or checking.done():
            checking = _checking[id(celery_app)] = _checker.submit(_check_broker, celery_app)
    try:
        return checking.result(timeout=BROKER_CHECK_WAIT)
    except TimeoutError:
        return f"error: no answer within {BROKER_CHECK_WAIT} s"


@bp.get("/readyz")
def readyz() -> Any:
    checks: dict[str, str] = {}
    try:
        with get_database().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            problem = schema_problem(conn)
        checks["database"] = "ok" if problem is None else f"error: {problem}"
    except Exception as exc:  # reported, not raised: this endpoint's job is to say so
        checks["database"] = f"error: {type(exc).__name__}"
    checks["broker"] = _broker_check(current_app.extensions["celery"])
    # Reported, not a condition: with the broker down the web app still serves (a
    # publish leaves its row to the sweep, the API reads and writes the database).
    # Failing readiness took every web process out of its load balancer at once for a
    # broker outage, and publishing with them (a gap review).
    ready = checks["database"] == "ok"
    body: dict[str, Any] = {"status": "ready" if ready else "unavailable", "checks": checks}
    if checks["broker"] == "ok" and request.args.get("fleet") == "1":
        # On request, not a condition of readiness (the web app serves without workers):
        # the workers' ping waits a second, and with it every probe took 1.03 s, past
        # Kubernetes' default probe timeout (the scale try); a shorter wait missed
        # replies that came in 0.5 s.
        body["fleet"] = fleet.collect(current_app.extensions["celery"]).as_dict()
    return jsonify(body), 200 if ready else 503
