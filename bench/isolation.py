"""5. Slow-endpoint isolation: 20% of endpoints hang until the timeout.

Ten partners, each its own endpoint on the Python receiver; events are published
round-robin at a steady 100/s (as in the latency benchmark) for the same duration, twice:

* reference: all ten endpoints healthy;
* slow: two of them (20%) hang past ``DELIVERER_TOTAL_TIMEOUT`` (2 s here; the receiver
  holds the request 3 s), so every attempt to them costs the sender the full timeout.

At 100 events/s, the slow endpoints receive 20/s; each holding a send for 2 s, that is
40 sends in flight on average, more than the threads of the default deployment (2 worker
processes x 16). The figure: the healthy endpoints' p99 publish-to-arrival latency in the
slow run against the all-healthy run. Reported beside it, for diagnosis: how many
notifications the slow lane deferred at least once (the ``deferred:`` lines of the
workers' logs), to healthy endpoints and to slow ones. Only slow ones should be: a
healthy endpoint taken for slow (one of its sends in flight past a third of the timeout,
0.67 s here, as a loaded machine can make one) has what its batches hold beyond two sends
deferred 2-4 s at a time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bench.context import Ctx, create_partners
from bench.env import BenchEnv
from bench.latency import LATE_MS, RATE, steady_publish
from bench.processes import Proc
from bench.receiver import ReceiverClient
from bench.report import Result, Row, summary

NAME = "isolation"
TITLE = "Slow-endpoint isolation (20% of endpoints hang until the timeout)"
PARTNERS = 10
SLOW = {3, 7}  # 20% of ten
TOTAL_TIMEOUT = 2.0
HANG = 3.0


def one_run(ctx: Ctx, duration: float, slow: set[int]) -> dict[str, Any]:
    env = ctx.env
    env.reset()
    denv = ctx.deliverer_env(DELIVERER_TOTAL_TIMEOUT=TOTAL_TIMEOUT,
                             DELIVERER_CONNECT_TIMEOUT=1)
    settings = env.configure_here(denv)
    receiver = ReceiverClient(env, hang=HANG)
    urls = [receiver.url(f"/slow/{p}/hook" if p in slow else f"/ok/{p}/hook")
            for p in range(PARTNERS)]
    partners = [p for p, _ in create_partners(settings, urls)]
    workers = ctx.start_workers(denv)
    try:
        out = steady_publish(denv, partners, RATE, duration, receiver, workers,
                             healthy=[p for p in range(PARTNERS) if p not in slow],
                             settle=60.0)
    finally:
        ctx.stop(workers, timeout=TOTAL_TIMEOUT + 10)
        receiver.stop()
    out["deferred"] = _deferred(env, workers, [partners[p] for p in sorted(slow)])
    by_partner = out.pop("latencies_by_partner")
    out["late"] = _late(env, [x for x in out.pop("late") if x[1] not in slow])
    healthy = [v for p, vs in by_partner.items() if p not in slow for v in vs]
    (failed,), = env.query("SELECT count(*) FROM attempts WHERE NOT success")
    out["healthy_latency_ms"] = summary(healthy)
    out["failed_attempts"] = int(failed)
    return out


def _late(env: BenchEnv, late: list[tuple[str, int, float, float]]) -> dict[str, Any]:
    """The healthy webhooks that arrived more than ``LATE_MS`` after their publish: how
    many, per partner, when they were published (seconds into the run), and the worst,
    each with what its row says (ms after its creation: enqueued, first attempt)."""
    if not late:
        return {"count": 0}
    per_partner: dict[int, int] = {}
    for _nid, p, _at, _ms in late:
        per_partner[p] = per_partner.get(p, 0) + 1
    worst = sorted(late, key=lambda x: -x[3])[:20]
    rows = {r[0]: r[1:] for r in env.query(
        "SELECT n.id, n.lane, n.attempt_count,"
        " (extract(epoch FROM n.enqueued_at - n.created_at) * 1000)::float8,"
        " (extract(epoch FROM min(a.started_at) - n.created_at) * 1000)::float8"
        " FROM notifications n LEFT JOIN attempts a ON a.notification_id = n.id"
        " WHERE n.id = ANY(%s) GROUP BY n.id", ([w[0] for w in worst],))}
    return {"count": len(late), "per_partner": per_partner,
            "published_from_s": late[0][2], "published_to_s": late[-1][2],
            "worst": [(*w, *(rows.get(w[0]) or ())) for w in worst]}


_DEFERRED = re.compile(r"\[notification=([0-9a-f-]{36})\] deferred:")


def _deferred(env: BenchEnv, workers: Sequence[Proc], slow_partners: list[str]
              ) -> dict[str, int]:
    """Notifications the slow lane deferred at least once, by the kind of endpoint."""
    ids = sorted({m.group(1) for w in workers for m in _DEFERRED.finditer(w.log_text())})
    if not ids:
        return {"healthy": 0, "slow": 0}
    rows = env.query("SELECT partner_id, count(*) FROM notifications WHERE id = ANY(%s) "
                     "GROUP BY partner_id", (ids,))
    slow = sum(n for partner, n in rows if partner in slow_partners)
    return {"healthy": sum(n for _partner, n in rows) - slow, "slow": slow}


def run(ctx: Ctx) -> Result:
    duration = float(ctx.size(30, 1))
    healthy_run = one_run(ctx, duration, set())
    slow_run = one_run(ctx, duration, SLOW)
    ref = healthy_run["healthy_latency_ms"]
    got = slow_run["healthy_latency_ms"]
    result = Result(NAME, TITLE)
    result.details = {"rate": RATE, "duration_s": duration, "slow_share": len(SLOW) / PARTNERS,
                      "total_timeout_s": TOTAL_TIMEOUT, "receiver_hang_s": HANG,
                      "all_healthy": healthy_run, "with_slow": slow_run}
    result.checks = {
        "every healthy webhook arrived (all healthy)": healthy_run["missing_healthy"] == 0,
        "every healthy webhook arrived (20% slow)": slow_run["missing_healthy"] == 0,
        "slow endpoints were attempted and timed out": slow_run["failed_attempts"] > 0,
    }
    result.rows = [
        Row("healthy endpoints' p99, 20% slow", got["p99"], "ms", reference=ref["p99"],
            reference_label="all endpoints healthy", target=("<=", 2.0), on="ratio"),
        Row("healthy endpoints' p50, 20% slow", got["p50"], "ms", reference=ref["p50"],
            reference_label="all endpoints healthy"),
        Row(f"healthy webhooks later than {LATE_MS / 1000:g} s, 20% slow",
            slow_run["late"]["count"], "",
            note=f"{healthy_run['late']['count']} with all endpoints healthy"),
        Row("healthy endpoints' notifications deferred by the slow lane, 20% slow",
            slow_run["deferred"]["healthy"], "",
            note=f"{slow_run['deferred']['slow']} of the slow endpoints'"),
    ]
    return result
