"""3. Retry timing: scheduled retries at a time scale; lateness against the ladder.

A Python receiver fails the first K attempts of every notification (HTTP 500), then
accepts. Each notification goes to its own endpoint (its own callback URL), so the
per-endpoint head-of-line queue holds nothing back and every one climbs the ladder.
``DELIVERER_TIME_SCALE`` shrinks the ladder (full run: 0.01, so 2 min, 5 min, 10 min
become 1.2 s, 3 s, 6 s). The sweep horizon is set shorter than the later steps, so those
retries go through the beat sweep (beat runs, from the Procfile, every
``DELIVERER_SWEEP_INTERVAL``) while the first step is enqueued by the worker itself.

For attempt j >= 2 of a notification, from the attempts table:
``ladder time = previous attempt's started_at + its duration + ladder.delay(j-1) * scale``
(the failure is recorded right after the POST ends, so this is a lower bound of the due
time the code computed: lateness is never under-reported). Lateness = started_at -
ladder time. Early = lateness below -1 ms.
"""

from __future__ import annotations

import time

from bench.context import PAYLOAD, Ctx, create_partners, log_errors
from bench.processes import BenchError, wait_until
from bench.receiver import ReceiverClient
from bench.report import Result, Row, summary

NAME = "retry"
TITLE = "Retry timing (lateness against the scaled ladder)"


def run(ctx: Ctx) -> Result:
    import deliverer

    env = ctx.env
    n = int(ctx.size(200, 10))
    k = int(ctx.size(3, 2))
    scale = float(ctx.size(0.01, 0.005))
    interval = float(ctx.size(1.0, 0.5))
    horizon = float(ctx.size(2.0, 1.0))
    env.reset()
    denv = ctx.deliverer_env(DELIVERER_TIME_SCALE=scale, DELIVERER_SWEEP_INTERVAL=interval,
                             DELIVERER_SWEEP_HORIZON=horizon)
    settings = env.configure_here(denv)
    ladder = settings.ladder
    receiver = ReceiverClient(env, fail_first=k)
    (partner_id, _key), = create_partners(settings, [receiver.url("/retry/default")])
    workers = ctx.start_workers(denv)
    beat = ctx.start_beat(denv)
    ladder_total = sum(ladder.delay(j) for j in range(1, k + 1)) * scale
    try:
        t0 = time.time()
        for i in range(n):
            deliverer.publish_event(partner_id, "invoice.settled", f"INV-{i:06d}",
                                    {**PAYLOAD, "sequence": i},
                                    callback_url=receiver.url(f"/retry/{i}/hook"))
        publish_s = time.time() - t0

        def all_sent() -> bool:
            for proc in (*workers, beat):
                if not proc.alive():
                    raise BenchError(f"{proc.name} exited:\n{proc.tail()}")
            (sent,), = env.query("SELECT count(*) FROM notifications WHERE status = 'SENT'")
            return sent >= n

        try:
            wait_until(all_sent, ladder_total * 2 + publish_s + 60, "every notification SENT",
                       interval=0.2)
        except BenchError as exc:
            counts = env.query("SELECT status, count(*) FROM notifications GROUP BY status")
            raise BenchError(f"{exc}; by status: {counts}; "
                             f"log errors: {log_errors([*workers, beat])}") from exc
        received = receiver.count()
    finally:
        ctx.stop([beat, *workers])
        receiver.stop()

    rows = env.query(
        "SELECT notification_id, extract(epoch FROM started_at), duration_ms, success "
        "FROM attempts ORDER BY notification_id, started_at, id")
    by_id: dict[str, list[tuple[float, int, bool]]] = {}
    for nid, started, duration_ms, success in rows:
        by_id.setdefault(nid, []).append((float(started), int(duration_ms), bool(success)))
    lateness_ms: list[float] = []
    by_step: dict[int, list[float]] = {}
    for attempts in by_id.values():
        for j in range(1, len(attempts)):
            prev_start, prev_ms, _ok = attempts[j - 1]
            due = prev_start + prev_ms / 1000 + ladder.delay(j) * scale
            late = (attempts[j][0] - due) * 1000
            lateness_ms.append(late)
            by_step.setdefault(j, []).append(late)
    early = sum(1 for v in lateness_ms if v < -1.0)
    stats = summary(lateness_ms)
    result = Result(NAME, TITLE)
    result.details = {
        "notifications": n, "failures_each": k, "time_scale": scale,
        "sweep_interval_s": interval, "sweep_horizon_s": horizon,
        "ladder_steps_scaled_s": [round(ladder.delay(j) * scale, 3) for j in range(1, k + 1)],
        "publish_s": round(publish_s, 2), "lateness_ms": stats,
        "lateness_ms_by_step": {j: summary(v) for j, v in sorted(by_step.items())},
        "early": early, "log_errors": log_errors([*workers, beat]),
    }
    result.checks = {
        "every notification SENT": len(by_id) == n,
        f"exactly {k + 1} attempts each": all(len(a) == k + 1 for a in by_id.values()),
        "last attempt successful, the others failed": all(
            [x[2] for x in a] == [False] * k + [True] for a in by_id.values()),
        "the receiver got one POST per attempt": received == len(rows) == n * (k + 1),
    }
    result.rows = [
        Row("lateness p50", stats["p50"], "ms"),
        Row("lateness p99", stats["p99"], "ms", target=("<=", 1000.0)),
        Row("early retries", float(early), "", target=("==", 0.0),
            note=f"of {len(lateness_ms)} retries"),
    ]
    return result
