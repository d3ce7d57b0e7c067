"""The ``/metrics`` page: the counters (``deliverer.metrics``) and the backlog's gauges.

The gauges (oldest due notification's lag, due count, failing endpoints, registered
endpoints by status, broker queue depths) are read from the database and the broker when
Prometheus scrapes, so they are right whichever process serves the page.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from deliverer.config import Settings, get_settings
from deliverer.db import session_scope
from deliverer.operations import stats

log = logging.getLogger(__name__)


class BacklogCollector(Collector):
    """Gauges read from the database and the broker at scrape time."""

    def __init__(self, celery_app: Any = None) -> None:
        self.celery_app = celery_app

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("deliverer_metrics_source_up",
                               "Whether a scrape-time source could be read (1) or not (0).",
                               labels=["source"])
        try:
            with session_scope() as session:
                due = stats.due_summary(session)
                failing = stats.failing_endpoint_count(session)
                by_status = stats.endpoint_statuses(session)
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
                                    "Endpoints whose last delivery failed, still tried (not "
                                    "disabled; callback URLs too).", value=failing)
            endpoints = GaugeMetricFamily(
                "deliverer_endpoints",
                "Registered endpoints by status (ACTIVE, FAILING, DISABLED).",
                labels=["status"])
            for status, count in by_status.items():
                endpoints.add_metric([status], count)
            yield endpoints
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


