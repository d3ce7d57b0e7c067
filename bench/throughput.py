"""1. Throughput end to end: N events published, delivered to nginx, every attempt recorded.

Measured in the same run, all POSTing the same kind of body to the same nginx:

* the client limit: a ``requests.Session`` POST loop in 2 processes (one per core);
* the plain-Celery reference (``bench.plain_celery``): one task per webhook, prefork -c 2;
  both references (``bench/throughput_references.py``) are measured before the first
  deliverer run and after each one, and a run's ratios are to the mean of the two
  measured beside it;
* deliverer, the headline: a burst of single publishes, as producers publish (a payment
  completes, one event is published): N events published one ``deliverer.publish_event``
  call at a time, with no worker running, then the Procfile's worker line started once per
  core. The rate is N over the time from the first attempt's start to the moment all N
  attempts are recorded: the workers drain a backlog of N (an end-of-day settlement, a
  big sale, the queue after a broker outage). Three shapes: N events for 1 partner, spread
  over 10, and spread over 1,000;
* fan-out: the 10-partner shape with 3 endpoints per partner (the default one and two
  registered), each event delivered to all three: N / 3 events, N webhooks;
* scaling: the 10-partner shape with one worker process against two;
* the bulk path, second: ``publish_events`` (batched messages) for 10 partners.

Checks, for every deliverer run: N attempt rows, all successful, one per notification,
every notification SENT, and nginx logged exactly N POSTs on deliverer's paths (one POST
per attempt).
"""

from __future__ import annotations

import time
from statistics import fmean
from typing import Any

from bench.context import (
    Ctx,
    bulk_publish,
    create_partners,
    event_spec,
    log_errors,
    wait_ready,
)
from bench.processes import BenchError, wait_until
from bench.profiling import profiled
from bench.report import Result, Row
from bench.throughput_references import plain_celery_run, requests_loop

NAME = "throughput"
TITLE = "Throughput end to end (N events to nginx, every attempt recorded)"
PARTNERS = 10
FANOUT = 3  # endpoints per partner in the fan-out run


def _publish_singly(partners: list[tuple[str, str]], n: int) -> list[str]:
    """Event i goes to partner i mod len(partners), one publish_event call each."""
    import deliverer

    ids = []
    for i in range(n):
        spec = event_spec(i)
        published = deliverer.publish_event(partners[i % len(partners)][0], spec["type"],
                                            spec["reference"], spec["payload"])
        ids.append(published.notification_id)
    return ids


def _publish_in_bulk(settings: Any, partners: list[tuple[str, str]], n: int
                     ) -> tuple[list[str], str]:
    ids: list[str] = []
    method = ""
    for p, (partner_id, _key) in enumerate(partners):
        specs = [event_spec(i) for i in range(p, n, len(partners))]
        published, method = bulk_publish(settings, partner_id, specs)
        ids.extend(published)
    return ids, method


def _register_endpoints(settings: Any, partners: list[tuple[str, str]],
                        urls: list[list[str]]) -> None:
    """Each partner's further endpoints (``partners.registered``), subscribed to all."""
    from deliverer.db import session_scope
    from deliverer.partners import registered

    with session_scope() as session:
        for (partner_id, _key), more in zip(partners, urls, strict=True):
            for url in more:
                registered.create(session, settings, partner_id, url=url)


def deliverer_run(ctx: Ctx, n: int, partner_count: int, workers_count: int | None = None,
                  bulk: bool = False, endpoints: int = 1) -> dict[str, Any]:
    """``n`` webhooks: ``n`` events, or with ``endpoints`` per partner ``n // endpoints``
    events each delivered to every endpoint of its partner."""
    env = ctx.env
    nginx = ctx.nginx()
    env.reset()
    denv = ctx.deliverer_env()
    settings = env.configure_here(denv)
    tag = (f"{'bulk' if bulk else 'single'}-{partner_count}-{workers_count or ctx.workers}"
           f"-{endpoints}")
    partners = create_partners(settings, [nginx.url(f"/d/{tag}/{p}/hook")
                                          for p in range(partner_count)])
    if endpoints > 1:
        _register_endpoints(settings, partners, [
            [nginx.url(f"/d/{tag}/{p}/hook{e}") for e in range(1, endpoints)]
            for p in range(partner_count)])
    events = n // endpoints
    n = events * endpoints

    t0 = time.time()
    if bulk:
        ids, method = _publish_in_bulk(settings, partners, events)
    else:
        ids, method = (_publish_singly(partners, events),
                       "deliverer.publish_event, one per event")
    publish_s = time.time() - t0
    if len(ids) != events:
        raise BenchError(f"published {len(ids)} of {events}")

    workers = ctx.start_workers(denv, count=workers_count, wait=False)
    # --profile: the first worker of one shape (single publishes to PARTNERS partners, one
    # endpoint each), from when it is ready.
    profile = (ctx.profile and not bulk and partner_count == PARTNERS and endpoints == 1
               and workers_count is None)
    try:
        if profile:
            wait_ready(workers[0], "ready.")
        with profiled(profile, workers[0].pid, ctx.results_dir,
                      "profile-throughput-worker") as found:
            def recorded() -> bool:
                dead = [w for w in workers if not w.alive()]
                if dead:
                    raise BenchError(f"{dead[0].name} exited:\n{dead[0].tail()}")
                (count,), = env.query("SELECT count(*) FROM attempts")
                return count >= n

            wait_until(recorded, max(180.0, n / 10), f"{n} attempts recorded",
                       interval=0.1)
            done_at = time.time()  # before py-spy stops: writing its files takes a while
    except BenchError as exc:
        counts = env.query("SELECT status, count(*) FROM notifications GROUP BY status")
        raise BenchError(f"{exc}; notifications by status: {counts}; "
                         f"log errors: {log_errors(workers)}") from exc
    finally:
        ctx.stop(workers)

    (attempts, ok, distinct, first), = env.query(
        "SELECT count(*), count(*) FILTER (WHERE success), count(DISTINCT notification_id), "
        "extract(epoch FROM min(started_at)) FROM attempts")
    sent = dict(env.query("SELECT status, count(*) FROM notifications GROUP BY status"))
    posts = sum(nginx.counts(f"/d/{tag}/").values())
    checks = {
        "attempts == N": attempts == n,
        "all attempts successful": ok == n,
        "one attempt per notification": distinct == n,
        "all notifications SENT": sent.get("SENT", 0) == n,
        "nginx got exactly N POSTs": posts == n,
    }
    seconds = done_at - float(first)
    result: dict[str, Any] = {
        "events": events, "webhooks": n, "partners": partner_count,
        "endpoints_per_partner": endpoints, "publish_method": method,
        "publish_s": round(publish_s, 2), "publish_per_s": events / publish_s,
        "drain_s": round(seconds, 2), "per_s": n / seconds, "workers": len(workers),
        "worker_command": "Procfile worker line, -n benchK@%h",
        "worker_concurrency": denv.get("WORKER_CONCURRENCY", "Procfile default"),
        "attempts": attempts, "statuses": sent, "nginx_posts": posts, "checks": checks,
        "log_errors": log_errors(workers),
    }
    if found:
        result["profile"] = found
    return result


def run(ctx: Ctx) -> Result:
    n = int(ctx.size(5_000, 100))
    nginx = ctx.nginx()
    # The references are measured before the first deliverer run and after each one, and
    # each run is compared with the mean of the two beside it: this machine's speed drifts
    # by a third within minutes (CPU stolen by its host), and a reference measured once,
    # minutes before the run it is compared with, tilted the ratios either way. The smoke
    # measures them once.
    loops: list[dict[str, Any]] = []
    plains: list[dict[str, Any]] = []

    def references() -> None:
        k = len(loops)
        loops.append(requests_loop(nginx.url(f"/ref/requests/{k}/hook"), n))
        plains.append(plain_celery_run(ctx, nginx.url(f"/ref/celery/{k}/hook"), n))

    shapes = (1, PARTNERS, min(1_000, n)) if not ctx.smoke else (PARTNERS,)
    plan: list[tuple[str, dict[str, Any]]] = [
        *((f"single, {k} partner(s)", {"partner_count": k}) for k in shapes),
        (f"single, 10 partners x {FANOUT} endpoints",
         {"partner_count": PARTNERS, "endpoints": FANOUT}),
        ("single, 10 partners, 1 worker", {"partner_count": PARTNERS, "workers_count": 1}),
        ("bulk, 10 partners", {"partner_count": PARTNERS, "bulk": True}),
    ]
    references()
    runs: dict[str, dict[str, Any]] = {}
    beside: dict[str, tuple[float, float]] = {}  # (client limit, plain Celery) per run
    for label, kwargs in plan:
        runs[label] = deliverer_run(ctx, n, **kwargs)
        if not ctx.smoke:
            references()
        beside[label] = (fmean(r["per_s"] for r in loops[-2:]),
                         fmean(r["per_s"] for r in plains[-2:]))
    plain_posts = sum(nginx.counts("/ref/celery/").values())

    result = Result(NAME, TITLE)
    result.checks = {f"{label}: {check}": ok for label, out in runs.items()
                     for check, ok in out.pop("checks").items()}
    result.checks["plain Celery: nginx got N POSTs per run"] = plain_posts == n * len(plains)
    result.details = {"events": n, "deliverer": runs, "references_beside": beside,
                      "plain_celery": plains, "requests_loop": loops,
                      "receiver": nginx.label}
    result.rows = []
    shape_labels = [(f"single publishes, {k} partner{'s' if k > 1 else ''}",
                     f"single, {k} partner(s)") for k in shapes]
    shape_labels.append((f"single publishes, 10 partners x {FANOUT} endpoints (fan-out)",
                         f"single, 10 partners x {FANOUT} endpoints"))
    sandwich = " (mean of the runs before and after)" if not ctx.smoke else ""
    for shape, label in shape_labels:
        out = runs[label]
        client, plain = beside[label]
        result.rows += [
            Row(f"{shape}: webhooks/s vs plain Celery", out["per_s"], "/s",
                reference=plain,
                reference_label=f"plain Celery task, prefork -c 2{sandwich}",
                target=(">=", 2.0), on="ratio"),
            Row(f"{shape}: webhooks/s vs client limit", out["per_s"], "/s",
                reference=client,
                reference_label=f"requests.Session loop x2 processes{sandwich}",
                target=(">=", 0.5), on="ratio"),
        ]
    two = runs[f"single, {PARTNERS} partner(s)"]
    one_worker = runs["single, 10 partners, 1 worker"]
    bulk = runs["bulk, 10 partners"]
    result.rows += [
        Row(f"scaling: {two['workers']} worker processes vs 1 (single, 10 partners)",
            two["per_s"], "/s", reference=one_worker["per_s"],
            reference_label="1 worker process", target=(">=", 1.6), on="ratio"),
        Row("bulk path (publish_events), 10 partners, vs plain Celery", bulk["per_s"], "/s",
            reference=beside["bulk, 10 partners"][1],
            reference_label=f"plain Celery task, prefork -c 2{sandwich}",
            note="second row: producers publish one event at a time"),
        Row("single publish rate, one producer (before the drain)", two["publish_per_s"],
            "/s", note="deliverer.publish_event"),
    ]
    return result
