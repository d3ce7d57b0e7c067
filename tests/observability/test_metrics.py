"""``/metrics``: delivery counters and latency (worker side), backlog gauges read at scrape
time (web side), and prometheus-client's multiprocess mode."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from kombu import Exchange, Producer, Queue
from prometheus_client import REGISTRY
from sqlalchemy import update

from deliverer import metrics
from deliverer.db import session_scope
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.operations.stats import broker_queue_depths
from tests.observability.metrics_text import value
from tests.support import helpers as h
from tests.support.ports import closed_port


def count(outcome: str, kind: str) -> float:
    return REGISTRY.get_sample_value("deliverer_deliveries_total",
                                     {"outcome": outcome, "kind": kind}) or 0.0


@pytest.mark.unit
def test_observe_attempt_counts_by_outcome_and_kind_and_times_the_attempt():
    before_ok, before_timeout = count("success", "none"), count("failure", "timeout")
    before_n = REGISTRY.get_sample_value("deliverer_attempt_duration_seconds_count",
                                         {"outcome": "failure"}) or 0.0
    before_slow = REGISTRY.get_sample_value("deliverer_attempt_duration_seconds_bucket",
                                            {"outcome": "failure", "le": "2.5"}) or 0.0
    metrics.observe_attempt(True, None, 0.02)
    metrics.observe_attempt(False, "timeout", 2.0)
    metrics.observe_attempt(False, "timeout", 3.0)
    metrics.observe_attempt(False, None, -1)  # clamped, counted as kind "unknown"
    assert count("success", "none") == before_ok + 1
    assert count("failure", "timeout") == before_timeout + 2
    assert count("failure", "unknown") >= 1
    assert REGISTRY.get_sample_value("deliverer_attempt_duration_seconds_count",
                                     {"outcome": "failure"}) == before_n + 3
    # 2.0 s and the clamped 0 fall in the 2.5 s bucket, 3.0 s does not.
    assert REGISTRY.get_sample_value("deliverer_attempt_duration_seconds_bucket",
                                     {"outcome": "failure", "le": "2.5"}) == before_slow + 2


@pytest.mark.unit
def test_observe_attempt_never_raises():
    metrics.observe_attempt(False, "timeout", "not a number")  # type: ignore[arg-type]


def test_metrics_page_has_counters_and_backlog_gauges(settings, make_app):
    url = "http://127.0.0.1:9/hook"
    shop = h.new_partner(settings, url)
    now = utcnow()
    for ago in (120, 5):
        h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=now - timedelta(seconds=ago),
                              scheduled_for=now, enqueued_at=now)
    h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                          next_attempt_at=now + timedelta(hours=1))
    with session_scope() as session:
        session.execute(update(Endpoint).values(failing_since=now))
    metrics.observe_attempt(False, "connection_refused", 0.01)

    response = make_app().test_client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.get_data(as_text=True)
    assert value(text, "deliverer_due_notifications") == 2
    lag = value(text, "deliverer_oldest_due_lag_seconds")
    assert lag is not None and 119 <= lag < 180
    assert value(text, "deliverer_failing_endpoints") == 1
    assert value(text, "deliverer_endpoints", status="FAILING") == 1
    assert value(text, "deliverer_endpoints", status="ACTIVE") == 0
    assert value(text, "deliverer_deliveries_total", outcome="failure",
                 kind="connection_refused") >= 1
    assert "deliverer_attempt_duration_seconds_bucket" in text
    for queue in ("deliver.first", "deliver.retry", "deliver.manual", "deliverer.maintenance"):
        depth = value(text, "deliverer_broker_queue_depth", queue=queue)
        assert depth is not None
    assert value(text, "deliverer_metrics_source_up", source="database") == 1
    assert value(text, "deliverer_metrics_source_up", source="broker") == 1


def test_metrics_page_survives_an_unreachable_broker(make_app):
    app = make_app(broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert value(text, "deliverer_metrics_source_up", source="broker") == 0
    assert value(text, "deliverer_metrics_source_up", source="database") == 1
    assert "deliverer_broker_queue_depth{" not in text
    assert value(text, "deliverer_due_notifications") == 0


def test_broker_queue_depth_counts_waiting_messages(celery_app):
    """On the session's broker (Redis, or kombu's SQLAlchemy transport), in a queue of its
    own so the running worker does not consume the messages."""
    name = "deliverer.test-depth"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with celery_app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            bound = queue.bind(channel)
            bound.declare()
            bound.purge()
            assert broker_queue_depths(celery_app, [name]) == {name: 0}
            producer = Producer(channel)
            for i in range(3):
                producer.publish({"n": i}, exchange=queue.exchange, routing_key=name,
                                 declare=[queue])
            assert broker_queue_depths(celery_app, [name]) == {name: 3}
        finally:
            queue.bind(channel).purge()
            queue.bind(channel).delete()
            channel.close()


def test_multiprocess_mode_adds_up_every_process(settings, make_app, tmp_path):
    """Two worker processes write their counts to PROMETHEUS_MULTIPROC_DIR; the web
    process's /metrics reports the sum."""
    directory = tmp_path / "prometheus"
    script = ("from deliverer.metrics import observe_attempt as o; "
              "o(True, None, 0.05); o(False, 'timeout', 15.0)")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                       env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin"})
    assert len(list(directory.glob("*.db"))) >= 2  # one file per process

    app = make_app(metrics_dir=str(directory))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert value(text, "deliverer_deliveries_total", outcome="success", kind="none") == 2
    assert value(text, "deliverer_deliveries_total", outcome="failure", kind="timeout") == 2
    assert value(text, "deliverer_attempt_duration_seconds_count", outcome="failure") == 2
    assert value(text, "deliverer_attempt_duration_seconds_bucket", outcome="failure",
                 le="10.0") == 0
    assert value(text, "deliverer_due_notifications") == 0  # scrape-time gauges too
