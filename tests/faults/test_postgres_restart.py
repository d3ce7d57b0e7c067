"""PostgreSQL restarted mid-run, twice (a clean fast shutdown, then an immediate one, as in
a crash): the API answers 503 while the database is away, never hangs; workers and the
API recover by themselves; everything published is delivered afterwards, and a POST made
while the database was away is recorded once it is back (not sent again)."""

from __future__ import annotations

import time

import requests

from tests.faults import harness

EVENTS = 300
RATE = 30.0
OUTAGES = (("fast", 3.0), ("immediate", 2.0))


def test_postgres_restart_mid_run(stack: harness.Stack, receiver, faults: harness.FaultLog):
    began = time.monotonic()
    # A worker that made its POST while the database was away keeps trying to record it
    # for up to a lease (deliverer.db.in_transaction). As in production (60 s leases,
    # restarts of seconds), the lease outlasts the outage: no need to send anything twice.
    stack.extra_env["DELIVERER_LEASE_SECONDS"] = "10"
    witness = harness.Witness(receiver, harness.steady(0.05))
    worker, beat, web, partner = stack.start_pipeline(witness.url("/hook"))

    publisher = harness.Publisher(stack, partner)
    publisher.start(EVENTS, RATE)
    windows = []
    for mode, seconds in OUTAGES:
        time.sleep(2.5)
        with faults.inject(f"postgres stop -m {mode}/start",
                           detail=f"{seconds:.0f}s down") as outage:
            stack.pg.stop(mode)
            time.sleep(seconds)
            stack.pg.start()
        windows.append((outage.start, outage.end))

    publisher.join(timeout=60)
    settle_s = stack.settle(timeout=60)
    ready = requests.get(f"{stack.api_url}/readyz", timeout=harness.REQUEST_TIMEOUT)
    ledger = harness.Ledger.collect("postgres restart", stack, witness, publisher, faults)
    api = publisher.stats()
    ledger.extra.update({
        "duration_s": round(time.monotonic() - began, 1),
        "settle_s": round(settle_s, 1),
        "api": api,
        "api_during_outages": [publisher.stats(window=w) for w in windows],
        "readyz_after": ready.status_code,
    })
    harness.REPORT.record(ledger)

    # The API said so while the database was away (503), and never hung.
    assert set(api["errors"]) <= {"503", "500"}, ledger.explain(stack)
    assert api["max_latency_s"] < harness.REQUEST_TIMEOUT, ledger.explain(stack)
    # Nobody was restarted: the same API, worker and beat recovered by themselves.
    assert web.alive() and worker.alive() and beat.alive(), stack.logs()
    assert ready.status_code == 200, ready.text
    assert ledger.published == EVENTS, ledger.explain(stack)
    assert ledger.balanced, ledger.explain(stack)
    assert ledger.lost == 0, ledger.explain(stack)
    assert ledger.pending == 0 and ledger.failed_final == 0, ledger.explain(stack)
    assert ledger.duplicates_unexplained == 0, ledger.explain(stack)
