"""Prometheus counters, counted where deliveries happen.

Worker side: ``observe_attempt`` after every HTTP attempt (the delivery service calls
it) counts deliveries by outcome and failure kind and records the attempt's latency.
The ``/metrics`` page adds gauges read at scrape time (``deliverer.operations.scrape``).

Counters live in the process that increments them. With several processes (gunicorn
workers, Celery workers, one machine), set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory shared by all of them, wiped at deploy: prometheus-client then keeps every
process's values in files there and the page adds them up (its multiprocess mode).
Without it, ``/metrics`` shows the counters of the process serving it only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

from deliverer.config import get_settings

log = logging.getLogger(__name__)

# Seconds; the sender's total deadline is 15 s by default.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)

DELIVERIES = Counter(
    "deliverer_deliveries",
    "HTTP delivery attempts by outcome (success: a 2xx) and failure kind "
    "(http_status, timeout, connection_refused...; none for a success).",
    ["outcome", "kind"],
)
ATTEMPT_SECONDS = Histogram(
    "deliverer_attempt_duration_seconds",
    "Duration of HTTP delivery attempts, from connect to the end of the capped response.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)

DEFERRED = Counter(
    "deliverer_deferred_deliveries",
    "Deliveries not attempted yet, by reason: slow_endpoint (the endpoint is slow and "
    "already has its share of sends in flight: the slow lane) or rate_limit (above the "
    "endpoint's rate limit); each is tried again later.",
    # Labelled, so that in multiprocess mode its file is created on first use, once
    # _ensure_multiproc_dir has made the directory.
    ["reason"],
)

_dir_checked = False


def _ensure_multiproc_dir() -> None:
    global _dir_checked
    if _dir_checked:
        return
    directory = get_settings().metrics_dir
    if directory:
        os.makedirs(directory, exist_ok=True)
    _dir_checked = True


@contextmanager
def _never_raises() -> Iterator[None]:
    """Metrics must not break a delivery: a failure to count is logged, not raised."""
    try:
        _ensure_multiproc_dir()
        yield
    except Exception:
        log.warning("could not record delivery metrics", exc_info=True)


def observe_attempt(success: bool, kind: str | None, duration_s: float) -> None:
    """Count one HTTP attempt."""
    with _never_raises():
        outcome = "success" if success else "failure"
        DELIVERIES.labels(outcome=outcome,
                          kind="none" if success else (kind or "unknown")).inc()
        ATTEMPT_SECONDS.labels(outcome=outcome).observe(max(0.0, float(duration_s)))


def observe_deferred(count: int, reason: str = "slow_endpoint") -> None:
    with _never_raises():
        DEFERRED.labels(reason=reason).inc(count)


__all__ = ["ATTEMPT_SECONDS", "DELIVERIES", "observe_attempt", "observe_deferred"]
