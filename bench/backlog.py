"""4. Backlog scale: a million notifications scheduled for future retries.

Two states of the same database, measured the same way:

* empty: only S "soon" rows, FAILED and due 25-55 s from now (inside the 60 s sweep
  horizon), so the broker has something to hold in both states;
* loaded: the same S soon rows plus N rows FAILED with ``next_attempt_at`` spread from
  5 minutes to 30 days ahead (one event each, over 10,000 endpoints of 100 partners),
  written server-side by ``INSERT ... SELECT generate_series`` in chunks, then ANALYZEd.
  N rows all with a due time is the worst case for the sweep's index: head-of-line holding
  would normally leave most of a failing endpoint's rows without one.

In each state the Procfile's worker (once per core) and beat run until the sweep has
handed the soon rows to the broker; then the workers' resident memory, the Redis memory of
the bench's keys (``MEMORY USAGE`` of each; ``used_memory`` of the whole shared server is
noted but not compared) and the broker's contents are read: queue lengths (LLEN),
unacknowledged messages (ETA tasks a worker holds), and the notification ids inside those
messages, checked against the database: every one must be due within the horizon. With the
processes stopped, the sweep (``scheduling.sweep.collect_due``, in a transaction rolled
back afterwards) is timed, p50 of repeated runs: the steady state (the soon rows handed
over, nothing newly due: the target), then, the soon rows marked unscheduled again, a
burst handing all S over (a few runs only: each leaves dead index entries behind). EXPLAIN
ANALYZE of the sweep query shows whether it uses the partial index
``ix_notifications_due``.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from bench.context import Ctx, create_partners, log_errors
from bench.processes import BenchError, rss_bytes, wait_until
from bench.report import Result, Row, summary

NAME = "backlog"
TITLE = "Backlog scale (1,000,000 future retries vs an empty database)"
SOON_FROM_S, SOON_SPAN_S = 25, 30
BURST_RUNS = 5

_EVENTS = """
WITH ep AS (SELECT id, partner_id, row_number() OVER (ORDER BY id) - 1 AS e FROM endpoints)
INSERT INTO events (id, partner_id, type, reference, payload, callback_url, body, created_at)
SELECT md5('bench-event-' || g)::uuid::text, ep.partner_id, 'transaction.paid',
       'TXN-' || g, %(payload)s::json, NULL, %(body)s, now() - interval '1 day'
FROM generate_series(%(start)s, %(stop)s - 1) AS g JOIN ep ON ep.e = g %% %(endpoints)s
"""

_NOTIFICATIONS = """
WITH ep AS (SELECT id, partner_id, url, row_number() OVER (ORDER BY id) - 1 AS e
            FROM endpoints)
INSERT INTO notifications (
    id, partner_id, event_id, endpoint_id, sequence, url, status, retry_attempts,
    manual_retry_count, attempt_count, latest_error_payload, next_attempt_at,
    cycle_started_at, sent_at, lane, held, lease_token, lease_expires_at, scheduled_for,
    enqueued_at, created_at, updated_at)
SELECT md5('bench-notification-' || g)::uuid::text, ep.partner_id,
       md5('bench-event-' || g)::uuid::text, ep.id, g / %(endpoints)s + 1, ep.url, 'FAILED',
       1 + g %% 9, 0, 1 + g %% 9, %(error)s::json, {due}, now() - interval '1 day', NULL,
       'retry', false, NULL, NULL, NULL, NULL, now() - interval '1 day', now()
FROM generate_series(%(start)s, %(stop)s - 1) AS g JOIN ep ON ep.e = g %% %(endpoints)s
"""
# Far future: 5 minutes to 30 days ahead, spread by a multiplicative hash of g.
_FAR = "now() + make_interval(secs => 300 + (g::bigint * 7919) %% 2591700)"
# Soon: inside the sweep horizon, spread over SOON_SPAN_S seconds.
_SOON = (f"now() + make_interval(secs => {SOON_FROM_S} + ((g - %(start)s) * {SOON_SPAN_S}.0)"
         " / greatest(%(stop)s - %(start)s, 1))")

_PAYLOAD = json.dumps({"amount": 12500, "currency": "EUR", "status": "paid"})
_BODY = json.dumps({"type": "transaction.paid", "data": json.loads(_PAYLOAD)})
_ERROR = json.dumps({"kind": "HTTP_STATUS", "message": "HTTP 503 Service Unavailable",
                     "statusCode": 503})


def insert_rows(ctx: Ctx, start: int, stop: int, endpoints: int, soon: bool,
                chunk: int = 100_000) -> float:
    t0 = time.time()
    with ctx.env.connection() as conn, conn.cursor() as cur:
        for lo in range(start, stop, chunk):
            params = {"start": lo, "stop": min(stop, lo + chunk), "endpoints": endpoints,
                      "payload": _PAYLOAD, "body": _BODY, "error": _ERROR}
            if soon:
                params.update(start=start, stop=stop)
            cur.execute("BEGIN")
            cur.execute(_EVENTS, params)
            cur.execute(_NOTIFICATIONS.format(due=_SOON if soon else _FAR), params)
            cur.execute("COMMIT")
            if soon:
                break
    return time.time() - t0


def setup_endpoints(ctx: Ctx, settings: Any, partners: int, endpoints: int) -> None:
    nginx = ctx.nginx()
    ids = [p for p, _ in create_partners(settings, [nginx.url(f"/backlog/{i}")
                                                    for i in range(partners)])]
    with ctx.env.connection() as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO endpoints (public_id, partner_id, url, last_sequence, created_at,
                                   consecutive_failures, failing_since, draining)
            SELECT 'ep_' || substr(md5(%(prefix)s || e), 1, 24),
                   (%(ids)s::text[])[1 + e %% %(p)s], %(prefix)s || e || '/hook', 0,
                   now() - interval '2 days', 1, now() - interval '1 day', false
            FROM generate_series(0, %(n)s - 1) AS e
        """, {"ids": ids, "p": len(ids), "prefix": nginx.url("/backlog/ep/"), "n": endpoints})


def time_sweep(settings: Any, runs: int) -> tuple[dict[str, float], int]:
    from deliverer.db import get_database
    from deliverer.scheduling.sweep import collect_due

    maker = get_database().sessionmaker
    times: list[float] = []
    found = 0
    for i in range(runs + 1):
        session = maker()
        try:
            t0 = time.perf_counter()
            due = collect_due(session, settings)
            elapsed = (time.perf_counter() - t0) * 1000
            found = len(due)
        finally:
            session.rollback()
            session.close()
        if i:  # the first run warms the connection pool and the caches
            times.append(elapsed)
    return summary(times), found


def explain_sweep(settings: Any) -> str:
    from deliverer.db import get_database
    from deliverer.models import utcnow
    from deliverer.scheduling.sweep import due_notifications_query

    engine = get_database().engine
    query = due_notifications_query(utcnow(), settings, settings.sweep_batch)
    compiled = query.compile(dialect=engine.dialect)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + str(compiled),
                                    compiled.params).all()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


def _message_ids(raw: bytes | str) -> list[str]:
    """Notification ids referenced by one kombu message (Celery protocol 2, JSON)."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash: [message, exchange, routing key]
            message = message[0]
        task = message.get("headers", {}).get("task", "")
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, TypeError, IndexError):
        return []
    if task == "deliverer.deliver" and args:
        return [str(args[0])]
    if task == "deliverer.deliver_many" and args:
        return [str(x) for x in args[0]]
    return []


def broker_state(ctx: Ctx, horizon: float) -> dict[str, Any]:
    from deliverer.broker import queues

    client = ctx.env.redis
    lengths = {q: int(client.llen(q)) for q in queues.ALL}
    raw = [m for q in queues.ALL for m in client.lrange(q, 0, -1)]
    unacked = list(client.hvals("unacked")) if client.exists("unacked") else []
    ids = {i for m in (*raw, *unacked) for i in _message_ids(m)}
    beyond = 0
    if ids:
        (beyond,), = ctx.env.query(
            "SELECT count(*) FROM notifications WHERE id = ANY(%s) AND "
            "(next_attempt_at IS NULL OR next_attempt_at > now() + make_interval(secs => %s))",
            (list(ids), horizon))
    (due_within,), = ctx.env.query(
        "SELECT count(*) FROM notifications WHERE next_attempt_at <= "
        "now() + make_interval(secs => %s)", (horizon,))
    memory = 0
    for key in client.scan_iter(count=1000):
        memory += int(client.memory_usage(key) or 0)
    info = client.info("memory")
    return {"queue_lengths": lengths, "unacked_messages": len(unacked),
            "notifications_in_broker": len(ids), "beyond_horizon_in_broker": int(beyond),
            "due_within_horizon_in_db": int(due_within), "bench_keys_memory_bytes": memory,
            "server_used_memory_bytes": int(info.get("used_memory", 0))}


def measure(ctx: Ctx, denv: dict[str, str], settings: Any, soon: int,
            runs: int) -> dict[str, Any]:
    workers = ctx.start_workers(denv)
    beat = ctx.start_beat(denv)
    try:
        def handed_over() -> bool:
            for proc in (*workers, beat):
                if not proc.alive():
                    raise BenchError(f"{proc.name} exited:\n{proc.tail()}")
            (scheduled,), = ctx.env.query(
                "SELECT count(*) FROM notifications WHERE scheduled_for IS NOT NULL")
            return scheduled >= soon

        wait_until(handed_over, 20, "the sweep to enqueue the soon rows", interval=0.2)
        # Let the workers fetch the ETA messages, and a few more sweeps run.
        time.sleep(1.0 if ctx.smoke else 3.0)
        state = broker_state(ctx, settings.sweep_horizon)
        state["worker_rss_bytes"] = sum(rss_bytes(w.pid) for w in workers)
        state["log_errors"] = log_errors([*workers, beat])
    finally:
        ctx.stop([beat, *workers])
    # The steady state first: the burst timing below updates the soon rows again and
    # again (rolled back, but each run leaves dead index entries behind).
    sweep_steady, steady_found = time_sweep(settings, runs)
    ctx.env.query("UPDATE notifications SET scheduled_for = NULL, enqueued_at = NULL "
                  "WHERE scheduled_for IS NOT NULL")
    sweep_burst, found = time_sweep(settings, BURST_RUNS)
    state.update(sweep_enqueue_ms=sweep_burst, sweep_enqueue_rows=found,
                 sweep_steady_ms=sweep_steady, sweep_steady_rows=steady_found)
    return state


def run(ctx: Ctx) -> Result:
    env = ctx.env
    n = int(ctx.size(1_000_000, 5_000))
    soon = int(ctx.size(1_000, 50))
    runs = int(ctx.size(50, 3))
    partners = int(ctx.size(100, 10))
    endpoints = int(ctx.size(10_000, 1_000))
    env.reset()
    denv = ctx.deliverer_env(DELIVERER_SWEEP_INTERVAL=1)
    settings = env.configure_here(denv)
    setup_endpoints(ctx, settings, partners, endpoints)

    insert_rows(ctx, n, n + soon, endpoints, soon=True)
    empty = measure(ctx, denv, settings, soon, runs)

    env.flush_redis()
    env.query("TRUNCATE attempts, notifications, events RESTART IDENTITY CASCADE")
    insert_s = insert_rows(ctx, 0, n, endpoints, soon=False)
    env.query("ANALYZE notifications")
    env.query("ANALYZE events")
    insert_rows(ctx, n, n + soon, endpoints, soon=True)
    loaded = measure(ctx, denv, settings, soon, runs)
    plan = explain_sweep(settings)
    (rows,), = env.query("SELECT count(*) FROM notifications")

    result = Result(NAME, TITLE)
    result.details = {"rows": int(rows), "future_retries": n, "soon_rows": soon,
                      "insert_s": round(insert_s, 1), "insert_rows_per_s": n / insert_s,
                      "sweep_runs": runs, "empty": empty, "loaded": loaded,
                      "explain": plan, "sweep_horizon_s": settings.sweep_horizon}
    result.checks = {
        "sweep uses ix_notifications_due": "ix_notifications_due" in plan,
        "broker holds every soon row (loaded)": loaded["notifications_in_broker"] == soon,
    }
    result.rows = [
        Row(f"sweep p50 with {n:,} future retries", loaded["sweep_steady_ms"]["p50"], "ms",
            reference=empty["sweep_steady_ms"]["p50"], reference_label="empty database",
            target=("<=", 20.0), note="steady state: nothing newly due"),
        Row(f"sweep p50 handing {soon:,} newly due rows over",
            loaded["sweep_enqueue_ms"]["p50"], "ms",
            reference=empty["sweep_enqueue_ms"]["p50"], reference_label="empty database",
            note="a burst: selects and marks them all"),
        Row("worker RSS (all workers)", loaded["worker_rss_bytes"], "B",
            reference=empty["worker_rss_bytes"], reference_label="empty database",
            target=("<=", 1.10), on="ratio"),
        Row("Redis memory of the bench's keys", loaded["bench_keys_memory_bytes"], "B",
            reference=empty["bench_keys_memory_bytes"], reference_label="empty database",
            target=("<=", 1.10), on="ratio"),
        Row("notifications in the broker", loaded["notifications_in_broker"], "",
            reference=loaded["due_within_horizon_in_db"],
            reference_label="due within the horizon (DB)"),
        Row("broker-held notifications beyond the horizon",
            loaded["beyond_horizon_in_broker"], "", target=("==", 0.0)),
    ]
    return result
