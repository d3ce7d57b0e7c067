"""``/healthz`` (the process answers) and ``/readyz`` (database and broker reachable)."""

from __future__ import annotations

import socket
import sqlite3
import time

import pytest
from sqlalchemy.exc import OperationalError

import deliverer.config
from deliverer import migrate
from deliverer.broker.dispatch import enqueue_delivery
from deliverer.models import NotificationStatus, utcnow
from tests.support import helpers as h
from tests.support.backend import BACKEND
from tests.support.ports import closed_port
from tests.support.receiver import sleep


def test_healthz(make_app):
    response = make_app().test_client().get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_readyz_when_database_and_broker_answer(make_app):
    began = time.monotonic()
    response = make_app().test_client().get("/readyz?fleet=1")
    assert response.status_code == 200
    assert response.json["status"] == "ready"
    assert response.json["checks"] == {"database": "ok", "broker": "ok"}
    assert set(response.json["fleet"]) == {"liveWorkers", "oldestUnackedSeconds"}
    assert time.monotonic() - began < 10  # a one-second ping, at most


@pytest.mark.skipif(BACKEND == "embedded", reason="no broadcast on the SQLAlchemy broker")
def test_readyz_counts_the_workers_and_the_oldest_unacknowledged(
        make_app, worker, settings, receiver):
    url = receiver.always("/held", sleep(2.0))
    partner = h.new_partner(settings, url)
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    enqueue_delivery(nid, "first")
    receiver.wait_for(1, "/held", timeout=30)
    fleet = make_app().test_client().get("/readyz?fleet=1").json["fleet"]
    assert fleet["liveWorkers"] >= 1, fleet
    unacked = fleet["oldestUnackedSeconds"]
    if BACKEND == "production":  # Redis can tell; RabbitMQ's AMQP cannot
        assert unacked["deliver.first"] > 0, fleet
        assert unacked["deliverer.maintenance"] is not None, fleet
    else:
        assert unacked is None, fleet


def test_readyz_when_the_broker_is_down(make_app):
    """Still ready, the broker's error reported: the web app serves without it (a publish
    leaves its row to the sweep). Unready, every web process left its load balancer at
    once for a broker outage, and publishing with them."""
    app = make_app(broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    began = time.monotonic()
    response = app.test_client().get("/readyz?fleet=1")
    assert time.monotonic() - began < 0.9  # within a probe's default timeout
    assert response.status_code == 200
    assert "fleet" not in response.json
    body = response.json
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error: ")
    # Liveness does not depend on dependencies: restarting the process would not help.
    assert app.test_client().get("/healthz").status_code == 200


def test_readyz_answers_in_time_when_the_broker_accepts_and_never_answers(make_app):
    """A broker that takes the connection and says nothing (hung, or a half-open
    network): the check waited for the transport's socket timeout (10 s on Redis), past
    a probe's 1 s, and every web process went unready at once."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepted by the kernel, never read nor answered
        port = silent.getsockname()[1]
        client = make_app(broker_url=f"redis://127.0.0.1:{port}/0").test_client()
        for _ in range(2):  # the second while the first check still hangs
            began = time.monotonic()
            response = client.get("/readyz")
            assert time.monotonic() - began < 0.9
            assert response.status_code == 200 and response.json["status"] == "ready"
            assert response.json["checks"]["broker"].startswith("error: "), response.json


def test_readyz_when_the_database_is_unreachable(settings, make_app):
    bad = settings.with_overrides(database_url="sqlite:////proc/no-such-dir/deliverer.db")
    app = make_app()
    app.config["DELIVERER_SETTINGS"] = bad
    deliverer.config.set_settings(bad)  # the process-wide engine is what /readyz uses
    try:
        response = app.test_client().get("/readyz")
    finally:
        deliverer.config.set_settings(settings)
    assert response.status_code == 503
    assert response.json["checks"]["database"].startswith("error: ")
    assert response.json["checks"]["broker"] == "ok"


@pytest.mark.unit  # a SQLite file of its own, whatever the session's backend
@pytest.mark.parametrize("revision,ready", [("0013", False), (None, True), ("0099", True)])
def test_readyz_says_when_the_schema_is_behind_this_release(settings, make_app, tmp_path,
                                                           revision, ready):
    """An upgrade try: new code started before its release step answered ready, then 500
    at the first query of a new column, and its beat's sweep failed every 5 s. A schema
    behind is not ready; one ahead (a later release's: a rollback) is."""
    scratch = settings.with_overrides(database_url=f"sqlite:///{tmp_path / 'schema.db'}")
    migrate.upgrade(scratch, "0013" if revision == "0013" else "head")
    if revision == "0099":
        with sqlite3.connect(tmp_path / "schema.db") as raw:
            raw.execute("UPDATE alembic_version SET version_num = '0099'")
    app = make_app()
    deliverer.config.set_settings(scratch)  # the process-wide engine is what /readyz uses
    try:
        response = app.test_client().get("/readyz")
    finally:
        deliverer.config.set_settings(settings)
    assert (response.status_code == 200) is ready, response.json
    if not ready:
        assert response.json["checks"]["database"] == (
            f"error: database at 0013, this release needs {migrate.code_head()}: run "
            "`deliverer db upgrade`")


class _Deadlock(Exception):
    pgcode = "40P01"


@pytest.mark.parametrize(("orig", "level", "said"), [
    (_Deadlock("deadlock detected\nDETAIL:  Process 1 waits for ShareLock"), "WARNING",
     "database kept aborting the transaction (deadlock detected): answered 503"),
    (Exception("connection to server at \"127.0.0.1\", port 9 failed\n\tIs it running?"),
     "ERROR", "database unavailable (connection to server at \"127.0.0.1\", port 9 "
              "failed): answered 503"),
])
def test_a_database_error_is_503_in_one_log_line(make_app, caplog, orig, level, said):
    # Logged whole, each was two tracebacks and the statement with its parameters (a
    # payload): 140 lines a request in the operator try.
    app = make_app()

    @app.get("/boom")
    def boom():
        raise OperationalError("INSERT INTO events VALUES (%(payload)s)",
                               {"payload": "card 4111"}, orig)

    with caplog.at_level("WARNING", logger="api.errors"):
        response = app.test_client().get("/boom")
    assert response.status_code == 503
    assert response.json["code"] == "SERVICE_UNAVAILABLE"
    assert response.headers["Retry-After"] == "5"
    [record] = [r for r in caplog.records if r.name == "api.errors"]
    assert (record.levelname, record.getMessage(), record.exc_info) == (level, said, None)


def test_readyz_answers_within_a_default_probe_timeout(make_app):
    # With the fleet's one-second ping every probe took 1.03 s (the scale try), past
    # Kubernetes' default timeoutSeconds of 1: the fleet is reported on request.
    client = make_app().test_client()
    client.get("/readyz")  # connections made
    began = time.monotonic()
    response = client.get("/readyz")
    assert response.status_code == 200 and "fleet" not in response.json
    assert time.monotonic() - began < 0.9
