"""Stopping a real worker process in the middle of a batch, as an operator scaling down
does (SIGTERM): the worker stops once its POST in flight is recorded, instead of sending
the rest of the batch first, and the next worker sends the rest, each webhook once.

The workers get a broker of their own (a separate SQLite file, or a Redis database of
their own), so the test session's in-process worker never takes their messages; the
database is the session's.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import deliverer
from deliverer.broker import queues
from deliverer.celery_app import make_celery
from deliverer.config import Settings
from deliverer.models import utcnow
from tests.conftest import BACKEND
from tests.operations.helpers import cli_env
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.backend import claim_redis_db, release_redis_db

pytestmark = pytest.mark.slow

POST_SECONDS = 2.0
JOBS = 8


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[str]:
    if BACKEND == "production":
        url, db = claim_redis_db()
        try:
            yield url
        finally:
            release_redis_db(db)
    else:
        yield f"sqla+sqlite:///{tmp_path / 'workers-broker.db'}"


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "deliverer.worker", "worker", "--pool",
             "threads", "--concurrency", "2", "-Q", ",".join(queues.ALL), "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
            cwd=Path(deliverer.__file__).resolve().parent.parent)


def _stop(worker: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """SIGTERM, as a platform scaling down sends it; how long the worker took to exit."""
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
    return time.monotonic() - began


def test_a_worker_stopped_mid_batch_hands_its_unsent_jobs_to_the_next(
        settings: Settings, receiver: rx.Receiver, private_broker: str, tmp_path: Path):
    url = receiver.always("/scale-down", rx.sleep(POST_SECONDS))
    partner = h.new_partner(settings, url)
    ids = [h.insert_notification(partner.partner_id, url, next_attempt_at=utcnow())
           for _ in range(JOBS)]
    # One POST at a time to the endpoint: the batch would take JOBS x POST_SECONDS.
    env = cli_env(settings, CELERY_BROKER_URL=private_broker,
                  DELIVERER_ENDPOINT_CONCURRENCY="1")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    first = _start_worker(env, first_log)
    try:
        sender = make_celery(settings.with_overrides(broker_url=private_broker))
        try:
            sender.send_task("deliverer.deliver_many", args=[ids], queue=queues.FIRST)
        finally:
            sender.close()
        receiver.wait_for(1, "/scale-down", timeout=60)
    finally:
        took = _stop(first)
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

    second = _start_worker(env, second_log)
    try:
        h.wait_until(lambda: all(h.sent(nid) for nid in ids), timeout=60,
                     message="the next worker sent what the first handed back")
    finally:
        _stop(second)
    assert Counter(r.headers["webhook-id"] for r in receiver.requests("/scale-down")) == \
        Counter(ids)
