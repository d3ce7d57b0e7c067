"""Liveness and readiness probes."""

from __future__ import annotations

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
    try:
        celery_app = current_app.extensions["celery"]
        with celery_app.connection_for_write() as conn:
            # One try: a retry slept 2 s first, past a probe's default 1 s timeout.
            conn.ensure_connection(max_retries=0, timeout=1)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
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
