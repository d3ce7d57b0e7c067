"""Beat killed (kill -9) and restarted, then two beats at once (a second one started by
mistake, with its own schedule file, as on a second machine), while a flaky merchant
makes the ladder, driven by the beat sweep, do real work: nothing lost, and no webhook
answered 2xx twice. Beat touches no delivery in flight, so no duplicate is excused."""

from __future__ import annotations

import time

from tests.faults import harness

EVENTS = 300
RATE = 30.0
SEED = 4


def test_beat_killed_restarted_and_doubled(stack: harness.Stack, receiver,
                                           faults: harness.FaultLog):
    began = time.monotonic()
    # Retries due further out than the horizon are left to the sweep, so with a horizon
    # below the first ladder step (120 ms) every retry is enqueued by a beat sweep.
    stack.extra_env["DELIVERER_SWEEP_HORIZON"] = "0.1"
    witness = harness.Witness(receiver, harness.flaky(SEED, share=0.4, max_failures=3))
    worker, beat, _web, partner = stack.start_pipeline(witness.url("/hook"))

    publisher = harness.Publisher(stack, partner)
    publisher.start(EVENTS, RATE)
    time.sleep(2.0)
    with faults.inject("kill -9 beat", allows_duplicates=False, detail="down 3s"):
        beat.kill9()
        time.sleep(3.0)
        # Restarted on the same schedule file, which a kill -9 may have left half-written.
        beat = stack.start_beat("beat")
    time.sleep(1.0)
    with faults.inject("second beat", allows_duplicates=False,
                       detail="two beats until the end of the run"):
        second = stack.start_beat("beat-second")
        publisher.join(timeout=30)
        settle_s = stack.settle(timeout=60)

    ledger = harness.Ledger.collect("beat kill + two beats", stack, witness, publisher, faults)
    retried = sum(1 for got in witness.answers().values() if len(got) > 1)
    sweeps = {p.name + f"#{i}": p.log().count("Sending due task")
              for i, p in enumerate(stack.processes) if p.role == "beat"}
    ledger.extra.update({
        "duration_s": round(time.monotonic() - began, 1),
        "settle_s": round(settle_s, 1),
        "webhooks_retried": retried,
        "sweeps_sent_per_beat": sweeps,
        "api": publisher.stats(),
    })
    harness.REPORT.record(ledger)

    assert beat.alive() and second.alive() and worker.alive(), stack.logs()
    assert sum(1 for n in sweeps.values() if n > 0) == 3, sweeps  # all three beats swept
    assert retried > EVENTS * 0.2, ledger.explain(stack)  # the ladder was exercised
    assert ledger.published == EVENTS, ledger.explain(stack)
    assert ledger.balanced, ledger.explain(stack)
    assert ledger.lost == 0, ledger.explain(stack)
    assert ledger.pending == 0 and ledger.failed_final == 0, ledger.explain(stack)
    assert ledger.delivered == EVENTS, ledger.explain(stack)
    assert ledger.duplicates == 0, ledger.explain(stack)
    assert ledger.attempts_unrecorded == 0, ledger.explain(stack)
