"""kombu's SQLAlchemy transport (the embedded default's broker) is pruned of what it has
handed out, and of nothing else. Against the real transport, on a broker of the test's
own (SQLite in a temporary directory), whatever the backend."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from kombu import Connection

import beat_schedule
from deliverer.broker import sqla_broker
from deliverer.config import Settings
from deliverer.scheduling import tasks

pytestmark = pytest.mark.unit


def _rows(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT payload, visible FROM kombu_message ORDER BY id").fetchall()


def test_only_what_was_handed_out_is_deleted(tmp_path: Path):
    path = tmp_path / "broker.db"
    url = f"sqla+sqlite:///{path}"
    assert sqla_broker.prune_consumed(url) == 0  # no message table yet

    with Connection(url) as conn:
        queue = conn.SimpleQueue("deliverer.test.prune")
        for i in range(5):
            queue.put({"n": i})
        for i in range(3):
            message = queue.get(timeout=5)
            assert message.payload == {"n": i}
            message.ack()
        queue.close()
    assert [visible for _, visible in _rows(path)] == [0, 0, 0, 1, 1]

    assert sqla_broker.prune_consumed(url, batch=2) == 3  # two batches: 2, then 1
    assert [visible for _, visible in _rows(path)] == [1, 1]
    with Connection(url) as conn:
        queue = conn.SimpleQueue("deliverer.test.prune")
        assert [queue.get(timeout=5).payload for _ in range(2)] == [{"n": 3}, {"n": 4}]
        queue.close()


def test_a_message_taken_but_not_acknowledged_survives_the_pruning(tmp_path: Path):
    """kombu puts an unacknowledged message back as a new row when its channel closes;
    the invisible row it was taken from is what the pruning deletes."""
    path = tmp_path / "broker.db"
    url = f"sqla+sqlite:///{path}"
    with Connection(url) as conn:
        queue = conn.SimpleQueue("deliverer.test.prune")
        queue.put({"n": "kept"})
        assert queue.get(timeout=5).payload == {"n": "kept"}  # never acknowledged
        queue.close()
    assert [visible for _, visible in _rows(path)] == [0, 1]

    assert sqla_broker.prune_consumed(url) == 1
    with Connection(url) as conn:
        queue = conn.SimpleQueue("deliverer.test.prune")
        message = queue.get(timeout=5)
        assert message.payload == {"n": "kept"}
        message.ack()
        queue.close()


def test_the_beat_prunes_an_sqlalchemy_broker_only(settings: Settings):
    entry = beat_schedule.build(settings.with_overrides(
        broker_url="sqla+sqlite:////tmp/broker.db"))["prune-broker-messages"]
    assert entry["task"] == tasks.prune_broker.name == "deliverer.prune_broker"
    assert entry["schedule"] == timedelta(minutes=10)
    redis = settings.with_overrides(broker_url="redis://127.0.0.1:6379/0")
    assert "prune-broker-messages" not in beat_schedule.build(redis)


def test_the_task_prunes_the_configured_broker(settings: Settings, override_settings,
                                               tmp_path: Path):
    path = tmp_path / "broker.db"
    url = f"sqla+sqlite:///{path}"
    with Connection(url) as conn:
        queue = conn.SimpleQueue("deliverer.test.prune")
        queue.put({"n": 1})
        queue.get(timeout=5).ack()
        queue.close()
    with override_settings(broker_url="redis://127.0.0.1:6379/0"):
        assert tasks.prune_broker() == 0  # not an SQLAlchemy broker: nothing to do
    with override_settings(broker_url=url):
        assert tasks.prune_broker() == 1
    assert _rows(path) == []

