"""A fresh deploy, as operators make it: every Procfile line from a clean clone.

Nothing is prepared that a deploy would not have: no data folder, no schedule file, the
app folder read-only. The stack is PostgreSQL (a new database) and a private Redis that
the test stops and starts. Time is scaled through README's own settings so that the first
retry lies beyond the sweep horizon: only beat's sweep can enqueue it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.faults import harness
from tests.faults.fresh_deploy import Deploy, readme_names
from tests.support.backend import PG_SERVER, create_pg_database, drop_pg_database
from tests.support.ports import free_port
from tests.support.raw_http import assert_refusals_in_json
from tests.support.receiver import Receiver, ok, sleep
from tests.support.waiting import wait_until

ADMIN_TOKEN = "fresh-deploy-admin"
TIME_SCALE = 0.05  # the ladder's first step, 2 minutes, takes 6 s
SWEEP_HORIZON = 2.0  # < 6 s: that retry is left to the sweep
BURST = 12


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[tuple[Deploy, harness.PrivateRedis]]:
    database = create_pg_database("deliverer_fresh")
    broker = harness.PrivateRedis(tmp_path)
    broker.start()
    port = free_port()
    env = {
        "DATABASE_URL": f"{PG_SERVER}/{database}",
        "CELERY_BROKER_URL": broker.url,
        "DELIVERER_ADMIN_TOKEN": ADMIN_TOKEN,
        "PORT": str(port),
        "DELIVERER_ALLOW_PRIVATE_URLS": "1",  # the receiver is on loopback
        "DELIVERER_TIME_SCALE": str(TIME_SCALE),
        "DELIVERER_SWEEP_INTERVAL": "0.5",
        "DELIVERER_SWEEP_HORIZON": str(SWEEP_HORIZON),
        "DELIVERER_LOST_MESSAGE_GRACE": "2",
        "DELIVERER_CONNECT_TIMEOUT": "1",
        "DELIVERER_TOTAL_TIMEOUT": "2",
        "DELIVERER_LEASE_SECONDS": "5",
    }
    unnamed = [name for name in env if not readme_names(name)]
    assert not unnamed, f"README.rst does not name {unnamed}"
    app = Deploy(tmp_path / "deploy", env)
    app.root.mkdir()
    try:
        app.build()
        yield app, broker
    finally:
        app.stop()
        broker.stop()
        drop_pg_database(database)


def _api(app: Deploy, method: str, path: str, **kwargs: object) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{app.env_vars['PORT']}{path}",
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            timeout=10, **kwargs)  # type: ignore[arg-type]


def _publish(app: Deploy, partner: str, reference: str, url: str | None = None) -> str:
    event: dict[str, object] = {"partnerId": partner, "type": "transaction.paid",
                                "reference": reference, "payload": {"reference": reference}}
    if url is not None:
        event["callbackUrl"] = url
    response = _api(app, "POST", "/internal/v1/events", json=event)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["notificationId"])


def _delivered(receiver: Receiver, path: str) -> set[str]:
    return {r.headers["webhook-id"] for r in receiver.requests(path)
            if r.headers.get("webhook-id")}


def _tracebacks(log: str) -> int:
    return log.count("Traceback (most recent call last)")


def test_every_procfile_line_runs_from_a_clean_clone(deploy, receiver):
    app, broker = deploy
    app.run("release", read_only=False).proc.wait(60)
    assert app.processes[-1].proc.returncode == 0, app.processes[-1].tail()
    assert not (app.app / ".data").exists()

    retry_path = "/retry"
    receiver.fail_then_succeed(retry_path, 1)
    receiver.always("/steady", ok())
    partner = app.cli("partner", "create", "--name", "Fresh", "--webhook-url",
                      receiver.url("/steady"))
    partner_id = partner.split('"id": "', 1)[1].split('"', 1)[0]

    started = time.monotonic()
    web, worker, beat = app.run("web"), app.run("worker"), app.run("beat")
    wait_until(lambda: _healthy(app), 30, message="the web process to answer",
               interval=0.1)

    # 1. A failed first attempt is retried by the sweep: the ladder's step (6 s) is
    #    beyond the horizon (2 s), so no countdown message carries it.
    retried = _publish(app, partner_id, "RETRY-1", receiver.url(retry_path))
    _wait(lambda: not beat.alive() or len(receiver.requests(retry_path)) >= 2, 40,
          "beat's sweep to enqueue the retry", web, worker, beat)
    assert beat.alive(), f"beat exited:\n{beat.tail()}"
    first, second = receiver.requests(retry_path)[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == retried
    assert second.at - first.at >= 0.9 * 120 * TIME_SCALE

    # 2. Every process is still up 15 s after it started, and beat logged no traceback.
    time.sleep(max(0.0, 15 - (time.monotonic() - started)))
    for process in (web, worker, beat):
        assert process.alive(), f"{process.name} exited:\n{process.tail()}"
    assert _tracebacks(beat.log()) == 0, beat.tail(60)
    # What gunicorn refuses itself answers as the API does, not with an HTML page.
    assert_refusals_in_json(int(app.env_vars["PORT"]))

    # 3. An event published while Redis is down is delivered once it is back; the outage
    #    is a WARNING line in the web log, not a traceback.
    broker.stop()
    during = _publish(app, partner_id, "OUTAGE-1")
    time.sleep(1.5)  # a few sweeps and worker reconnects fail meanwhile
    broker.start()
    _wait(lambda: during in _delivered(receiver, "/steady"), 40,
          "the event published during the outage to be delivered", web, worker, beat)
    assert "broker unavailable" in web.log()
    for process in (web, worker, beat):
        assert _tracebacks(process.log()) == 0, f"{process.name}:\n{process.tail(80)}"

    # 4. A worker killed with kill -9 mid-burst, then started again: nothing undelivered.
    receiver.always("/slow", sleep(0.3, ok()))
    burst = [_publish(app, partner_id, f"BURST-{i}", receiver.url("/slow"))
             for i in range(BURST)]
    receiver.wait_for(2, "/slow", timeout=20)
    worker.kill9()
    again = app.run("worker", serial=1)
    _wait(lambda: set(burst) <= _delivered(receiver, "/slow"), 60,
          "every event of the burst to be delivered after the kill", web, again, beat)


def _wait(predicate: Callable[[], object], timeout: float, message: str,
          *processes: harness.ManagedProcess) -> None:
    """``wait_until``, failing with the processes' last log lines: a timeout alone does
    not say which process stopped doing its part."""
    try:
        wait_until(predicate, timeout, message=message, interval=0.1)
    except AssertionError as exc:
        tails = "\n".join(f"--- {p.name} (alive: {p.alive()}):\n{p.tail(60)}"
                           for p in processes)
        raise AssertionError(f"{exc}\n{tails}") from None


def _healthy(app: Deploy) -> bool:
    try:
        return _api(app, "GET", "/healthz").status_code == 200
    except requests.RequestException:
        return False

