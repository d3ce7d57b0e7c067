"""Celery's own operator tools against a real worker process: ``celery inspect ping``,
``inspect active``, ``control shutdown``, and Flower's HTTP API.

They all need the worker's remote control (a broadcast to its pidbox), which kombu's
SQLAlchemy transport cannot carry between processes: these tests run on the server
backends (Redis, RabbitMQ). The worker gets a broker of its own, so the session's
in-process worker never takes its messages; the database is the session's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deliverer.broker import queues
from deliverer.celery_app import make_celery
from deliverer.config import Settings
from deliverer.models import NotificationStatus, utcnow
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.backend import BACKEND, private_broker_url
from tests.support.cli import cli_env, run_cli
from tests.support.ports import closed_port
from tests.support.worker_process import REPO, celery_cli, start_worker, stop_worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BACKEND == "embedded",
                       reason="no remote control on kombu's SQLAlchemy transport"),
]

NODE = "tools@test"


@dataclass
class Fleet:
    env: dict[str, str]
    broker_url: str
    worker: subprocess.Popen[bytes]
    log: Path

    def send(self, settings: Settings, notification_id: str) -> str:
        app = make_celery(settings.with_overrides(broker_url=self.broker_url))
        try:
            return str(app.send_task("deliverer.deliver", args=[notification_id],
                                     queue=queues.FIRST).id)
        finally:
            app.close()


@pytest.fixture(scope="module")
def fleet(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("celery-tools")
    with private_broker_url(tmp) as broker_url:
        env = cli_env(settings, CELERY_BROKER_URL=broker_url)
        log = tmp / "worker.log"
        # -E: task events, which Flower's task list is made of (README, Flower).
        worker = start_worker(env, log, NODE, "-E")
        try:
            h.wait_until(lambda: " ready." in log.read_text() or worker.poll() is not None,
                         timeout=60, message="the worker to be ready")
            assert worker.poll() is None, log.read_text()
            yield Fleet(env, broker_url, worker, log)
        finally:
            stop_worker(worker)


def test_inspect_ping_gets_the_workers_pong(fleet: Fleet):
    result = celery_cli(fleet.env, "inspect", "ping", "-d", NODE, "--timeout", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert NODE in result.stdout and "pong" in result.stdout, result.stdout


def test_inspect_active_shows_the_delivery_running(fleet: Fleet, settings: Settings,
                                                    receiver: rx.Receiver):
    # The POST is answered once `celery inspect active` has seen its task running.
    release = threading.Event()
    url = receiver.always("/slow", rx.held(release))
    partner = h.new_partner(settings, url)
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    task_id = fleet.send(settings, nid)
    receiver.wait_for(1, "/slow", timeout=30)
    try:
        result = celery_cli(fleet.env, "inspect", "active", "-d", NODE, "--timeout", "5",
                            "--json")
    finally:
        release.set()
    assert result.returncode == 0, result.stdout + result.stderr
    assert task_id in result.stdout and "deliverer.deliver" in result.stdout, result.stdout
    assert nid in result.stdout, result.stdout
    h.wait_until(lambda: h.sent(nid), timeout=30, message="the slow delivery to finish")


def test_flower_lists_the_worker_and_its_delivery_tasks(fleet: Fleet, settings: Settings,
                                                        receiver: rx.Receiver,
                                                        tmp_path: Path):
    pytest.importorskip("flower")
    port = closed_port()
    log = tmp_path / "flower.log"
    # Flower 2 serves its API to authenticated users only; a test on loopback needs none.
    env = dict(fleet.env, FLOWER_UNAUTHENTICATED_API="true")
    with open(log, "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "deliverer.worker", "flower",
             "--address=127.0.0.1", f"--port={port}"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def workers() -> dict:
            try:
                got = requests.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=10)
            except requests.RequestException:
                return {}
            return got.json() if got.status_code == 200 else {}

        listed = h.wait_until(lambda: w if NODE in (w := workers()) else None, timeout=60,
                              interval=0.5, message="Flower to list the worker")
        assert NODE in listed, log.read_text()
        # Flower is now listening to the task events: a delivery it sees from start to end.
        url = receiver.always("/flower", rx.ok())
        partner = h.new_partner(settings, url)
        nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                    next_attempt_at=utcnow())
        task_id = fleet.send(settings, nid)

        def task() -> dict:
            got = requests.get(f"{base}/api/task/info/{task_id}", timeout=10)
            return got.json() if got.status_code == 200 else {}

        seen = h.wait_until(lambda: t if (t := task()).get("state") == "SUCCESS" else None,
                            timeout=60, interval=0.5, message="Flower to see the task")
        assert seen["name"] == "deliverer.deliver", seen
        assert seen["worker"] == NODE, seen
        assert h.sent(nid)
        if BACKEND == "production":
            # The Broker page's figures: Flower reads Redis itself, with a client it
            # chooses by the broker URL's scheme (RabbitMQ's need its management API,
            # Flower's --broker-api; kombu's SQLAlchemy transport has none).
            got = requests.get(f"{base}/api/queues/length", timeout=10)
            assert got.status_code == 200, got.text
            lengths = {q["name"]: q["messages"] for q in got.json()["active_queues"]}
            assert set(queues.ALL) <= set(lengths) and lengths[queues.FIRST] == 0, lengths
    finally:
        flower.terminate()
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            flower.kill()
            flower.wait(5)


def test_deliverer_stats_counts_the_live_workers(fleet: Fleet, settings: Settings):
    out = run_cli(settings, "stats", "--json", CELERY_BROKER_URL=fleet.broker_url)
    health = json.loads(out.stdout)["fleet"]
    assert health["liveWorkers"] == 1, health
    # Redis tells how long a worker has held a message; RabbitMQ's AMQP cannot.
    assert (health["oldestUnackedSeconds"] is None) == (BACKEND == "rabbitmq"), health


def test_pool_commands_the_threads_pool_cannot_do_answer_why(fleet: Fleet):
    """``control pool_grow``, ``pool_shrink`` and ``autoscale``: the threads pool has a
    fixed size and no autoscaler. Celery's commands raised in the worker (an ERROR with
    a traceback in its log for each, the reply an exception's repr)."""
    replies = {command: celery_cli(fleet.env, "control", *command.split(), "-d", NODE,
                                   "--timeout", "5")
               for command in ("pool_grow 2", "pool_shrink 1", "autoscale 4 2")}
    for command, result in replies.items():
        out = result.stdout + result.stderr
        expected = "autoscale is not enabled" if command.startswith("autoscale") \
            else "pool's size is fixed at start"
        assert expected in out and "WORKER_CONCURRENCY" in out, (command, out)
        assert "scale by adding or stopping worker processes" in out, (command, out)
    log = fleet.log.read_text()
    assert "pidbox command error" not in log and "Traceback" not in log, log


def test_control_shutdown_stops_the_worker_warmly(fleet: Fleet):
    """Last in this module: it stops the module's worker."""
    began = time.monotonic()
    result = celery_cli(fleet.env, "control", "shutdown", "-d", NODE, "--timeout", "2")
    # A worker that stops sends no reply: the command line reports none.
    fleet.worker.wait(30)
    log = fleet.log.read_text()
    assert fleet.worker.returncode == 0, log + result.stdout + result.stderr
    assert "Got shutdown from remote" in log, log
    assert time.monotonic() - began < 60
