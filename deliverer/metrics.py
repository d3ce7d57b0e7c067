"""Prometheus metrics: counted where deliveries happen, gauges computed at scrape time.

Worker side: ``observe_attempt`` after every HTTP attempt (the delivery service calls
it) counts deliveries by outcome and failure kind and records the attempt's latency.
Web side: ``render`` builds the ``/metrics`` page; the gauges about the backlog (oldest
due notification's lag, due count, failing endpoints, broker queue depths) are read from
the database and the broker when Prometheus scrapes, so they are right whichever process
serves the page.

Counters live in the process that increments them. With several processes (gunicorn
workers, Celery workers, one machine), set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory shared by all of them, wiped at deploy: prometheus-client then keeps every
process's values in files there and ``render`` adds them up (its multiprocess mode).
Without it, ``/metrics`` shows the counters of the process serving it only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from deliverer.config import Settings, get_settings

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
    "Deliveries not attempted yet because their endpoint is slow and already has its "
    "share of sends in flight (the slow lane); each is tried again later.",
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


def observe_deferred(count: int) -> None:
    with _never_raises():
        DEFERRED.labels(reason="slow_endpoint").inc(count)


class BacklogCollector(Collector):
    """Gauges read from the database and the broker at scrape time."""

    def __init__(self, celery_app: Any = None) -> None:
        self.celery_app = celery_app

    def collect(self) -> Iterator[Metric]:
        from deliverer.db import session_scope
        from deliverer.operations import stats

        up = GaugeMetricFamily("deliverer_metrics_source_up",
                               "Whether a scrape-time source could be read (1) or not (0).",
                               labels=["source"])
        try:
            with session_scope() as session:
                due = stats.due_summary(session)
                failing = stats.failing_endpoint_count(session)
        except Exception:
            log.warning("metrics: database unavailable", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            yield GaugeMetricFamily(
                "deliverer_oldest_due_lag_seconds",
                "Seconds since the most overdue notification became due (0: none due).",
                value=due.lag_seconds)
            yield GaugeMetricFamily("deliverer_due_notifications",
                                    "Notifications whose next attempt is due now.",
                                    value=due.count)
            yield GaugeMetricFamily("deliverer_failing_endpoints",
                                    "Endpoints whose last delivery failed.", value=failing)
        if self.celery_app is not None:
            depths = stats.broker_queue_depths(self.celery_app)
            readable = {q: d for q, d in depths.items() if d is not None}
            up.add_metric(["broker"], 1 if len(readable) == len(depths) else 0)
            family = GaugeMetricFamily("deliverer_broker_queue_depth",
                                       "Messages waiting in each broker queue.",
                                       labels=["queue"])
            for queue, depth in readable.items():
                family.add_metric([queue], depth)
            yield family
        yield up


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def registry_for_scrape(settings: Settings | None = None,
                        celery_app: Any = None) -> CollectorRegistry:
    """A registry with this process's metrics (or every process's, in multiprocess mode)
    and the scrape-time gauges."""
    from prometheus_client import multiprocess

    settings = settings or get_settings()
    registry = CollectorRegistry(auto_describe=False)
    if settings.metrics_dir:
        os.makedirs(settings.metrics_dir, exist_ok=True)
        multiprocess.MultiProcessCollector(registry, path=settings.metrics_dir)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(BacklogCollector(celery_app))
    return registry


def render(settings: Settings | None = None, celery_app: Any = None) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type."""
    return generate_latest(registry_for_scrape(settings, celery_app)), CONTENT_TYPE_LATEST


__all__ = ["ATTEMPT_SECONDS", "DELIVERIES", "observe_attempt", "render"]
