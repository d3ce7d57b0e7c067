"""7. What one ``deliverer.publish_event`` costs, beside the least a commit can cost.

Side by side, alternating in the same process on the same database engine (so the same
pooled connection, single-threaded): one ``deliverer.publish_event`` call, and a bare
``INSERT`` of a row of about the same size plus ``COMMIT`` into a table of the
benchmark's own. The ratio of their medians says how far publishing is from one round
trip of a committed write. No worker runs meanwhile (the messages wait in the broker).

Then producers in parallel: 1 process, and 4 processes, each publishing its share one
event at a time; the ratio of their rates says whether producers scale. The same is
measured for the bare INSERT + COMMIT, as the reference of what the machine and the
database allow: on a small machine the producers and PostgreSQL share the cores, so
parallel producers scale by how little CPU each write costs, not only by how little
they wait for each other. So each run also reports the CPU a write cost, the whole
machine's (``/proc/stat``: producers, PostgreSQL, kernel) over the producers' timed
window divided by the writes, and the producers' own (``getrusage`` around their
loops), and how many of the cores the four kept busy.

Last, 4 producers against 1 with every event for one partner: a partner's publishes
take turns (its sequence numbers are gap-free, ``partners/endpoints.publish_lock``), so
this is how far one merchant's publishes scale, without a target.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from bench.context import PAYLOAD, Ctx, create_partners, event_spec
from bench.report import Result, Row, summary

NAME = "publish"
TITLE = "Publish cost (one publish_event vs INSERT + COMMIT) and parallel producers"
PARTNERS = 10
PRODUCERS = 4
PROBE_TABLE = "bench_insert_probe"


def _probe_table(create: bool) -> None:
    from sqlalchemy import text

    from deliverer.db import get_database

    with get_database().engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {PROBE_TABLE}"))
        if create:
            conn.execute(text(f"CREATE TABLE {PROBE_TABLE} (id bigserial PRIMARY KEY, "
                              "reference text NOT NULL, payload text NOT NULL)"))


def _bare_write(engine: Any, reference: str, body: str) -> None:
    """The reference: one bare INSERT + COMMIT of a row the size of an event's."""
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text(f"INSERT INTO {PROBE_TABLE} (reference, payload) VALUES (:r, :p)"),
                     {"r": reference, "p": body})
        conn.commit()


def side_by_side(settings: Any, partners: Sequence[str], n: int) -> dict[str, Any]:
    import deliverer
    from deliverer.db import get_database

    engine = get_database().engine
    body = json.dumps(PAYLOAD)
    publish_ms: list[float] = []
    insert_ms: list[float] = []
    for i in range(n):
        spec = event_spec(i)
        t0 = time.perf_counter()
        deliverer.publish_event(partners[i % len(partners)], spec["type"],
                                spec["reference"], spec["payload"])
        publish_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        _bare_write(engine, spec["reference"], body)
        insert_ms.append((time.perf_counter() - t0) * 1000)
    return {"publish_ms": summary(publish_ms), "insert_commit_ms": summary(insert_ms)}


def _busy_jiffies() -> int:
    """The whole machine's CPU time so far (``/proc/stat``): user, nice, system, irq and
    softirq; idle, iowait and steal left out, and guest, which user already counts."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values[:8]) - values[3] - values[4] - values[7]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _producer(env: Mapping[str, str], partners: Sequence[str], offset: int, count: int,
              start_at: float) -> tuple[float, float, float, float]:
    """One producer process: ``count`` publishes, or with no partners ``count`` bare
    INSERT + COMMITs into the probe table, each on its own pooled connection checkout.
    Returns when its loop began and ended, the CPU seconds it spent in it, and when it
    was ready (imported and warmed up)."""
    os.environ.update(env)
    import deliverer
    from deliverer.celery_app import make_celery
    from deliverer.db import get_database

    make_celery().set_default()
    engine = get_database().engine
    body = json.dumps(PAYLOAD)

    def one(i: int) -> None:
        spec = event_spec(i)
        if not partners:
            _bare_write(engine, spec["reference"], body)
            return
        deliverer.publish_event(partners[i % len(partners)], spec["type"], spec["reference"],
                                spec["payload"])

    one(offset)  # warm: the pool's connection, the prepared statement
    ready = time.time()
    while time.time() < start_at:
        time.sleep(0.001)
    cpu, begin = _own_cpu(), time.time()
    for i in range(offset, offset + count):
        one(i)
    return begin, time.time(), _own_cpu() - cpu, ready


def producers(env: Mapping[str, str], partners: Sequence[str], processes: int,
              n: int) -> dict[str, Any]:
    """``processes`` producers publishing ``n`` events in all (bare INSERT + COMMITs when
    ``partners`` is empty)."""
    per = n // processes
    start_at = time.time() + 3.0  # every process spawned, imported and warmed up by then
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_producer, dict(env), list(partners), k * per, per, start_at)
                   for k in range(processes)]
        while time.time() < start_at:
            time.sleep(0.001)
        busy = _busy_jiffies()
        parts = [f.result(timeout=600) for f in futures]
        busy = _busy_jiffies() - busy
    seconds = max(p[1] for p in parts) - min(p[0] for p in parts)
    events = per * processes
    # The machine's CPU is counted from the start; a producer still warming up then
    # would add its imports to it: no CPU figure for such a run.
    late = max(p[3] for p in parts) > start_at
    cpu_ms = math.nan if late else busy * 1000 / os.sysconf("SC_CLK_TCK") / events
    return {"processes": processes, "events": events, "seconds": round(seconds, 2),
            "per_s": events / seconds, "cpu_ms_per_write": round(cpu_ms, 3),
            "producer_cpu_ms_per_write": round(sum(p[2] for p in parts) * 1000 / events, 3),
            "cores_busy": round(cpu_ms * events / seconds / 1000, 2)}


def run(ctx: Ctx) -> Result:
    env = ctx.env
    n = int(ctx.size(2_000, 40))
    env.reset()
    denv = ctx.deliverer_env()
    settings = env.configure_here(denv)
    partners = [p for p, _ in create_partners(
        settings, [f"http://127.0.0.1:9/p/{p}/hook" for p in range(PARTNERS)])]
    _probe_table(create=True)
    try:
        costs = side_by_side(settings, partners, n)
        one = producers(denv, partners, 1, n)
        many = producers(denv, partners, PRODUCERS, n)
        one_insert = producers(denv, [], 1, n)
        many_inserts = producers(denv, [], PRODUCERS, n)
        one_partner = producers(denv, partners[:1], 1, n)
        one_partner_many = producers(denv, partners[:1], PRODUCERS, n)
    finally:
        _probe_table(create=False)
    (published,), = env.query("SELECT count(*) FROM notifications")
    env.reset()
    result = Result(NAME, TITLE)
    result.details = {**costs, "one_producer": one, "parallel_producers": many,
                      "one_inserter": one_insert, "parallel_inserters": many_inserts,
                      "one_partner_one_producer": one_partner,
                      "one_partner_parallel_producers": one_partner_many,
                      "partners": PARTNERS, "cores": os.cpu_count()}
    expected = (n + one["events"] + many["events"] + one_partner["events"]
                + one_partner_many["events"] + 2 * (1 + PRODUCERS))
    result.checks = {"every publish recorded a notification": published == expected}
    result.rows = [
        Row("publish_event p50 vs INSERT + COMMIT p50", costs["publish_ms"]["p50"], "ms",
            reference=costs["insert_commit_ms"]["p50"],
            reference_label="bare INSERT + COMMIT, same engine", target=("<=", 2.0),
            on="ratio"),
        Row("publish_event p99", costs["publish_ms"]["p99"], "ms"),
        Row(f"{PRODUCERS} producer processes vs 1", many["per_s"], "/s",
            reference=one["per_s"], reference_label="1 producer process",
            target=(">=", 1.6), on="ratio"),
        Row(f"{PRODUCERS} bare INSERT + COMMIT processes vs 1", many_inserts["per_s"], "/s",
            reference=one_insert["per_s"], reference_label="1 process",
            note="the reference: what the machine allows a bare write"),
        Row(f"CPU per publish, whole machine, {PRODUCERS} producers vs 1",
            many["cpu_ms_per_write"], "ms", reference=one["cpu_ms_per_write"],
            reference_label="1 producer"),
        Row(f"CPU per publish, in the producers, {PRODUCERS} vs 1",
            many["producer_cpu_ms_per_write"], "ms",
            reference=one["producer_cpu_ms_per_write"], reference_label="1 producer"),
        Row(f"CPU per bare INSERT + COMMIT, whole machine, {PRODUCERS} processes vs 1",
            many_inserts["cpu_ms_per_write"], "ms", reference=one_insert["cpu_ms_per_write"],
            reference_label="1 process"),
        Row(f"cores busy, {PRODUCERS} producers", many["cores_busy"], "",
            reference=float(os.cpu_count() or 1), reference_label="cores"),
        Row(f"cores busy, {PRODUCERS} bare INSERT + COMMIT processes",
            many_inserts["cores_busy"], "", reference=float(os.cpu_count() or 1),
            reference_label="cores"),
        Row(f"{PRODUCERS} producer processes vs 1, all for one partner",
            one_partner_many["per_s"], "/s", reference=one_partner["per_s"],
            reference_label="1 producer, one partner",
            note="a partner's publishes take turns (gap-free sequence numbers)"),
    ]
    return result
