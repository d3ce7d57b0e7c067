"""Stopping a real worker process in the middle of a batch, as an operator scaling down
does (SIGTERM, or ``celery control shutdown``): the worker stops once its POST in flight
is recorded, instead of sending the rest of the batch first, and the next worker sends
the rest, each webhook once.

The workers get a broker of their own (a separate SQLite file, a Redis database or a
RabbitMQ vhost of their own), so the test session's in-process worker never takes their
messages; the database is the session's.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from deliverer.broker import queues
from deliverer.celery_app import make_celery
from deliverer.config import Settings
from deliverer.models import NotificationStatus, utcnow
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.backend import BACKEND, private_broker_url
from tests.support.cli import cli_env
from tests.support.worker_process import start_worker, stop_worker, wait_exit

pytestmark = pytest.mark.slow

POST_SECONDS = 2.0
JOBS = 8


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[str]:
    with private_broker_url(tmp_path) as url:
        yield url


NODE = "scale-down@test"  # the first worker's node name, for `celery control`


def _stop(worker: subprocess.Popen[bytes], how: str, broker_url: str,
          settings: Settings, timeout: float = 30.0) -> float:
    """SIGTERM, as a platform scaling down sends it, or the broadcast ``celery control
    shutdown`` sends (here from this process: the command line's start-up would take
    seconds, tests/operations/test_celery_tools.py runs it); how long the worker took to
    exit."""
    if how == "sigterm":
        return stop_worker(worker, timeout)
    began = time.monotonic()
    app = make_celery(settings.with_overrides(broker_url=broker_url))
    try:
        app.control.shutdown(destination=[NODE])
    finally:
        app.close()
    return wait_exit(worker, timeout, began)


# Remote control needs a broadcast, which kombu's SQLAlchemy transport cannot carry from
# one process to another (its fanout bindings live in each process's memory).
STOPS = ["sigterm", pytest.param("celery control shutdown", marks=pytest.mark.skipif(
    BACKEND == "embedded", reason="no remote control on kombu's SQLAlchemy transport"))]


@pytest.mark.parametrize("how", STOPS)
def test_a_worker_stopped_mid_batch_hands_its_unsent_jobs_to_the_next(
        settings: Settings, receiver: rx.Receiver, private_broker: str, tmp_path: Path,
        how: str):
    url = receiver.always("/scale-down", rx.sleep(POST_SECONDS))
    partner = h.new_partner(settings, url)
    ids = [h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=utcnow())
           for _ in range(JOBS)]
    # One POST at a time to the endpoint: the batch would take JOBS x POST_SECONDS.
    env = cli_env(settings, CELERY_BROKER_URL=private_broker,
                  DELIVERER_ENDPOINT_CONCURRENCY="1")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    first = start_worker(env, first_log, NODE, "--without-heartbeat")
    try:
        sender = make_celery(settings.with_overrides(broker_url=private_broker))
        try:
            sender.send_task("deliverer.deliver_many", args=[ids], queue=queues.FIRST)
        finally:
            sender.close()
        receiver.wait_for(1, "/scale-down", timeout=60)
    finally:
        took = _stop(first, how, private_broker, settings)
    log = first_log.read_text()
    assert first.returncode == 0, log
    sent_by_first = len(receiver.requests("/scale-down"))
    # The POST in flight at the SIGTERM (two if the next one started meanwhile on a
    # starved machine); the rest of the batch would have kept it going for 12 s more.
    assert 1 <= sent_by_first <= 2, log
    assert took < (JOBS - sent_by_first) * POST_SECONDS, log
    assert f"worker stopping: {JOBS - sent_by_first} of {JOBS} deliveries handed back" \
        in log, log
    assert sum(1 for nid in ids if h.sent(nid)) == sent_by_first  # recorded before it exited

    # The slow answers were for the stop; what the next worker sends is counted, not
    # timed (one at a time, they would take (JOBS - 1) x POST_SECONDS).
    receiver.always("/scale-down", rx.ok())
    second = start_worker(env, second_log, "next@test", "--without-heartbeat")
    try:
        h.wait_until(lambda: all(h.sent(nid) for nid in ids), timeout=60,
                     message="the next worker sent what the first handed back")
    finally:
        _stop(second, "sigterm", private_broker, settings)
    assert Counter(r.headers["webhook-id"] for r in receiver.requests("/scale-down")) == \
        Counter(ids)
