"""A chaotic merchant: 5xx, timeouts, connection resets, slow bodies, huge bodies and
redirects, randomised with a fixed seed, over a dozen endpoints. Every webhook ends SENT
(exactly one 2xx at the receiver) or FAILED with its cycle exhausted, and every request
the receiver saw has its attempt row, with the failure kind the receiver caused."""

from __future__ import annotations

import time
from collections import Counter

from tests.faults import harness

EVENTS = 300
RATE = 40.0
SEED = 5
ENDPOINTS = 12


def test_chaotic_receiver(stack: harness.Stack, receiver, faults: harness.FaultLog):
    began = time.monotonic()
    # A short cycle so that doomed webhooks reach FAILED-final within the run:
    # 120 ms, 300 ms, 600 ms, 900 ms, 1.8 s, then every 1.8 s, for 8 s in all.
    stack.extra_env["DELIVERER_RETRY_LADDER"] = "120,300,600,900,1800;repeat=1800;max_age=8000"
    total_timeout = stack.setting("DELIVERER_TOTAL_TIMEOUT")
    witness = harness.Witness(receiver, harness.chaos(SEED, total_timeout))
    urls = [witness.url(f"/hook/{i}") for i in range(ENDPOINTS)]
    worker, _beat, _web, partner = stack.start_pipeline(urls[0], concurrency=16)

    publisher = harness.Publisher(stack, partner, callback_url=lambda i: urls[i % ENDPOINTS])
    with faults.inject("chaotic receiver", allows_duplicates=False,
                       detail=f"seed {SEED}, {ENDPOINTS} endpoints"):
        publisher.start(EVENTS, RATE)
        publisher.join(timeout=30)
        settle_s = stack.settle(timeout=90)

    ledger = harness.Ledger.collect("chaotic receiver", stack, witness, publisher, faults)
    rows = harness.read_rows(stack)
    answers = witness.answers()
    seen = witness.requests_by_id()
    mismatched: list[str] = []
    for nid, row in rows.items():
        got = answers.get(nid, [])
        if len(row.attempts) != seen.get(nid, 0) or len(row.attempts) != len(got):
            mismatched.append(f"{nid}: {len(row.attempts)} attempt rows, receiver logged "
                              f"{seen.get(nid, 0)}, answered {len(got)}")
            continue
        for (success, status, kind), answer in zip(row.attempts, got, strict=True):
            expected = None if answer.success else harness.EXPECTED_KIND[answer.label]
            code = answer.label.rsplit("_", 1)[-1]
            if (success != answer.success or kind != expected
                    or (answer.label.startswith(("http_", "redirect_")) and str(status) != code)):
                mismatched.append(f"{nid}: receiver did {answer.label}, attempt recorded "
                                  f"success={success} status={status} kind={kind}")
    doomed = [nid for nid in rows if harness.chaos_is_doomed(SEED, witness.keys.get(nid, nid))]
    labels = Counter(a.label for got in answers.values() for a in got)
    ledger.problems.extend(mismatched[:10])
    ledger.extra.update({
        "duration_s": round(time.monotonic() - began, 1),
        "settle_s": round(settle_s, 1),
        "answers_by_behaviour": dict(sorted(labels.items())),
        "doomed": len(doomed),
        "attempt_mismatches": len(mismatched),
        "max_attempts_per_webhook": max((len(r.attempts) for r in rows.values()), default=0),
        "api": publisher.stats(),
    })
    harness.REPORT.record(ledger)

    assert worker.alive(), stack.logs()
    assert ledger.published == EVENTS, ledger.explain(stack)
    assert ledger.balanced, ledger.explain(stack)
    assert ledger.lost == 0, ledger.explain(stack)
    assert ledger.pending == 0, ledger.explain(stack)
    assert ledger.delivered + ledger.failed_final == EVENTS, ledger.explain(stack)
    assert ledger.duplicates == 0, ledger.explain(stack)
    assert not mismatched, ledger.explain(stack)
    # Doomed webhooks end FAILED, all the others were tried until one of them got through
    # or their cycle ran out; every failure kind was exercised.
    assert all(rows[nid].status == "FAILED" for nid in doomed), ledger.explain(stack)
    assert {"reset", "timeout", "slow_body", "huge_500", "redirect_301"} <= set(labels)
