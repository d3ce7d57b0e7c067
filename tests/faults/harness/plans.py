"""How the witness answers an event's n-th request: ``steady`` (always 200), ``flaky`` (a
share fails a few times first) and ``chaos`` (every kind of failure and success, a share
doomed), each fixed by its seed; and which failure kind the sender must record for each."""

from __future__ import annotations

import random

from tests.faults.harness.witness import Plan
from tests.support import receiver as rcv


def steady(delay: float = 0.0) -> Plan:
    """Always 200, after ``delay`` (keeps deliveries in flight long enough to hit)."""
    behaviour = rcv.sleep(delay, rcv.ok()) if delay > 0 else rcv.ok()

    def plan(_key: str, _n: int) -> tuple[str, rcv.Behaviour, bool]:
        return "ok", behaviour, True

    return plan


def flaky(seed: int, share: float = 0.4, max_failures: int = 3) -> Plan:
    """``share`` of the webhooks get 1..max_failures 500s before a 200."""

    def failures(key: str) -> int:
        rng = random.Random(f"{seed}:{key}")
        return rng.randint(1, max_failures) if rng.random() < share else 0

    def plan(key: str, n: int) -> tuple[str, rcv.Behaviour, bool]:
        if n < failures(key):
            return "http_500", rcv.status(500), False
        return "ok", rcv.ok(), True

    return plan


# Chaos: how the receiver fails, and how it succeeds. Each label names the failure kind
# the sender must record for it (None: a 2xx, the attempt succeeds).
def chaos_behaviours(total_timeout: float) -> tuple[dict[str, rcv.Behaviour],
                                                    dict[str, rcv.Behaviour]]:
    failures = {
        "http_500": rcv.status(500),
        "http_502": rcv.status(502),
        "http_503": rcv.status(503),
        "http_504": rcv.sleep(0.3, rcv.status(504)),
        "timeout": rcv.sleep(total_timeout + 1.5, rcv.ok()),  # answers after we gave up
        "reset": rcv.reset(),
        "slow_body": rcv.trickle(400, 0.05),  # 200 headers, body takes 20 s: deadline
        "huge_500": rcv.huge(8 * 1024 * 1024, 500),
        "redirect_301": rcv.redirect("http://127.0.0.1:9/elsewhere", 301),
        "redirect_307": rcv.redirect("/hook-moved", 307),
    }
    successes = {
        "ok_200": rcv.ok(),
        "ok_202": rcv.ok(202, b"accepted"),
        "ok_204": rcv.ok(204, b""),
        "huge_200": rcv.huge(8 * 1024 * 1024, 200),  # read up to the cap, then dropped
        "slow_ok": rcv.sleep(0.4, rcv.ok()),
        "trickle_ok": rcv.trickle(10, 0.03),  # a slow body that still beats the deadline
    }
    return failures, successes


EXPECTED_KIND = {
    "http_500": "http_status", "http_502": "http_status", "http_503": "http_status",
    "http_504": "http_status", "huge_500": "http_status", "timeout": "timeout",
    "slow_body": "timeout", "reset": "connection_reset", "redirect_301": "redirect",
    "redirect_307": "redirect",
}


def chaos(seed: int, total_timeout: float, doomed_share: float = 0.06,
          max_failures: int = 4) -> Plan:
    """Randomised with a fixed seed, per event: a share is doomed (never 2xx), the rest
    fail 0..max_failures times (each a random failure) before a random success."""
    failures, successes = chaos_behaviours(total_timeout)
    failure_labels = sorted(failures)
    success_labels = sorted(successes)

    def plan(key: str, n: int) -> tuple[str, rcv.Behaviour, bool]:
        rng = random.Random(f"{seed}:{key}")
        doomed = rng.random() < doomed_share
        fail_count = rng.choice([0, 0, 1, 1, 2, 3, max_failures])
        pick = random.Random(f"{seed}:{key}:{n}")
        if doomed or n < fail_count:
            label = pick.choice(failure_labels)
            return label, failures[label], False
        label = pick.choice(success_labels)
        return label, successes[label], True

    return plan


def chaos_is_doomed(seed: int, key: str, doomed_share: float = 0.06) -> bool:
    return random.Random(f"{seed}:{key}").random() < doomed_share
