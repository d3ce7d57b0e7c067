"""``kill -9`` of workers in the middle of a run, several times, a worker restarted after
each kill: nothing lost; a webhook is sent twice only if its POST was in flight when its
worker died (the outcome could not be recorded), and always with the same webhook-id."""

from __future__ import annotations

import os
import random
import signal
import time

from tests.faults import harness

EVENTS = 360
RATE = 30.0  # events per second: a 12 s run
SEED = 1


def test_kill_workers_mid_run(stack: harness.Stack, receiver, faults: harness.FaultLog):
    began = time.monotonic()
    rng = random.Random(SEED)
    # A slow-ish merchant keeps deliveries in flight, so the kills do hit some.
    witness = harness.Witness(receiver, harness.steady(0.15))
    # Prefork: a killed pool process makes the parent reject (requeue) its task
    # (task_reject_on_worker_lost). Threads: the Procfile's worker. All boot at once.
    prefork = stack.start_worker("prefork", pool="prefork", concurrency=2, wait=False)
    threads = stack.start_worker("threads", pool="threads", concurrency=8, wait=False)
    beat = stack.start_beat("beat", wait=False)
    stack.start_api()
    partner = stack.create_partner(witness.url("/hook"))
    stack.wait_ready(prefork, threads, beat)

    publisher = harness.Publisher(stack, partner)
    publisher.start(EVENTS, RATE)

    plan = ["prefork-child", "threads", "prefork", "prefork-child", "threads"]
    for step, target in enumerate(plan):
        time.sleep(2.0 + rng.random())
        if target == "prefork-child":
            stack.wait_ready(prefork)
            children = prefork.children()
            assert children, f"prefork worker has no pool processes:\n{prefork.tail()}"
            victim = rng.choice(children)
            with faults.inject("kill -9 worker pool process", detail=f"pid {victim}"):
                os.kill(victim, signal.SIGKILL)
            continue
        worker = prefork if target == "prefork" else threads
        with faults.inject("kill -9 worker", detail=f"{worker.name} pid {worker.pid}"):
            worker.kill9()
        # The replacement, as a supervisor would start it.
        if target == "prefork":
            prefork = stack.start_worker(f"prefork-r{step}", pool="prefork", concurrency=2,
                                         wait=False)
        else:
            threads = stack.start_worker(f"threads-r{step}", pool="threads", concurrency=8,
                                         wait=False)

    publisher.join(timeout=30)
    settle_s = stack.settle(timeout=60)
    ledger = harness.Ledger.collect("worker kill -9", stack, witness, publisher, faults)
    worker_lost = sum(p.log().count("Task handler raised error: WorkerLostError")
                      for p in stack.processes if p.role == "worker")
    ledger.extra.update({
        "duration_s": round(time.monotonic() - began, 1),
        "settle_s": round(settle_s, 1),
        "tasks_requeued_on_worker_lost": worker_lost,
        "api": publisher.stats(),
    })
    harness.REPORT.record(ledger)

    assert ledger.published == EVENTS, ledger.explain(stack)
    assert ledger.balanced, ledger.explain(stack)
    assert ledger.lost == 0, ledger.explain(stack)
    assert ledger.pending == 0 and ledger.failed_final == 0, ledger.explain(stack)
    assert ledger.delivered == EVENTS, ledger.explain(stack)
    assert ledger.duplicates_unexplained == 0, ledger.explain(stack)
    assert len(faults.faults) == len(plan)
