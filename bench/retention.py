"""8. Retention at scale: the attempt purge on a table of 10 million rows (PostgreSQL).

Attempts grow by one row per attempt: at 1,000 webhooks/s that is 86 million rows a day.
The table is filled with N rows spread evenly over ten days (about the size of attempt
rows a delivery writes: a URL, a short body, an error payload on failures); the purge
then deletes the oldest day, through ``deliverer.operations.purge.purge_attempts``, the
function the daily beat task runs, with its default batch size.

Reported: rows deleted per second, and how long a day's rows at 1,000/s would take at
that rate; the table's and its indexes' size before the purge, after it, and after a
plain ``VACUUM`` (what autovacuum would do): a DELETE frees no disk space by itself, it
leaves dead rows that a VACUUM makes reusable.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from bench.context import Ctx, create_partners
from bench.report import Result, Row

NAME = "retention"
TITLE = "Retention at scale (the attempt purge on a large attempts table)"
DAYS = 10
DAY_AT_1000_PER_S = 86_400_000


def _sizes(env: Any) -> dict[str, int]:
    (table, indexes), = env.query(
        "SELECT pg_table_size('attempts'), pg_indexes_size('attempts')")
    return {"table_bytes": int(table), "index_bytes": int(indexes)}


def _fill(env: Any, notification_id: str, n: int) -> None:
    """``n`` attempt rows, evenly over the last ``DAYS`` days, in one INSERT ... SELECT."""
    env.query(
        "INSERT INTO attempts (notification_id, trigger, url, started_at, duration_ms, "
        "success, response_status, response_body, error_payload) "
        "SELECT %s, 'FIRST', 'https://merchant.example/webhooks/deliverer', "
        f"now() - interval '{DAYS} days' + (i * interval '{DAYS * 86_400} seconds' / %s), "
        "12 + i %% 50, i %% 10 <> 0, CASE WHEN i %% 10 = 0 THEN 500 ELSE 200 END, "
        "CASE WHEN i %% 10 = 0 THEN 'Internal Server Error' ELSE 'ok' END, "
        "CASE WHEN i %% 10 = 0 THEN '{\"kind\": \"http_status\", \"message\": "
        "\"HTTP 500 Internal Server Error\", \"httpStatus\": 500, \"hint\": "
        "\"The endpoint answered with an error.\"}'::json END "
        "FROM generate_series(1, %s) AS i", (notification_id, n, n))
    env.query("ANALYZE attempts")


def run(ctx: Ctx) -> Result:
    env = ctx.env
    n = int(ctx.size(10_000_000, 20_000))
    env.reset()
    denv = ctx.deliverer_env()
    settings = env.configure_here(denv)
    (partner_id, _key), = create_partners(settings, ["http://127.0.0.1:9/hook"])
    import deliverer

    nid = deliverer.publish_event(partner_id, "transaction.paid", "RETENTION",
                                  {}).notification_id
    t0 = time.time()
    _fill(env, nid, n)
    fill_s = time.time() - t0
    before = _sizes(env)

    from deliverer.operations.purge import purge_attempts

    t0 = time.time()
    deleted = purge_attempts(timedelta(days=DAYS - 1))
    purge_s = time.time() - t0
    after = _sizes(env)
    t0 = time.time()
    env.query("VACUUM attempts")
    vacuum_s = time.time() - t0
    vacuumed = _sizes(env)
    (left,), = env.query("SELECT count(*) FROM attempts")
    env.reset()

    rate = deleted / purge_s if purge_s else 0.0
    result = Result(NAME, TITLE)
    result.details = {"rows": n, "days": DAYS, "fill_s": round(fill_s, 1), "deleted": deleted,
                      "purge_s": round(purge_s, 2), "vacuum_s": round(vacuum_s, 2),
                      "before": before, "after_purge": after, "after_vacuum": vacuumed,
                      "left": left}
    expected = n // DAYS
    result.checks = {"about a day's rows deleted": abs(deleted - expected) <= expected * 0.01,
                     "the rest kept": left == n - deleted}
    mb = 1024 * 1024
    result.rows = [
        Row("purge: rows deleted per second", rate, "/s",
            note=f"{deleted:,} rows, default batches"),
        Row("a day at 1,000 webhooks/s would take", DAY_AT_1000_PER_S / rate / 3600
            if rate else float("nan"), "h", note="86.4 M rows at the rate above"),
        Row("table + indexes before the purge", (before["table_bytes"]
                                                 + before["index_bytes"]) / mb, "MB"),
        Row("table + indexes after the purge", (after["table_bytes"]
                                                + after["index_bytes"]) / mb, "MB",
            note="a DELETE frees no space by itself"),
        Row("table + indexes after VACUUM", (vacuumed["table_bytes"]
                                             + vacuumed["index_bytes"]) / mb, "MB",
            note="space reusable, not returned"),
    ]
    return result
