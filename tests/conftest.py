"""Test infrastructure: real database, real broker, real worker, real HTTP receiver.

``DELIVERER_TEST_BACKEND`` chooses the backend for the whole session:

* ``embedded`` (default): a SQLite file and kombu's SQLAlchemy transport
  (``sqla+sqlite:////abs/path/broker.db``) in a temporary directory.
* ``production``: a fresh, uniquely named PostgreSQL database on 127.0.0.1:5432 (created
  here, dropped at the end) and Redis on 127.0.0.1:6379, database 13 (flushed at start;
  another free database when a concurrent session holds 13).
* ``rabbitmq``: the same PostgreSQL database, and RabbitMQ on 127.0.0.1:5672 in a vhost
  of the session's own (created here, deleted at the end). CI runs a chosen part of
  the suite on it (scripts/test).

Some tests need to run only once, not once per backend: they run in the embedded pass
(the default backend) and are skipped, saying why, in the others:

* ``unit``: touches neither the database nor the broker (validation, rendering,
  configuration, a subprocess with its own SQLite file); the per-test clean-up is skipped.
* ``backend_independent``: uses the session's database, broker and worker like any test,
  but what it proves does not depend on them (a real browser driving pages whose HTTP
  side the other tests check on every backend). Cleaned up like any test.

Mark a test so only when the backend cannot change its outcome; when in doubt, leave it
to run on every backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish
from kombu import Connection
from sqlalchemy.exc import DBAPIError

import deliverer.config
import deliverer.stopping
from deliverer import migrate
from deliverer.broker import queues
from deliverer.celery_app import make_celery
from deliverer.config import Settings
from deliverer.db import get_database, reset_database
from deliverer.delivery import pacing
from deliverer.delivery.sending import slow_lane, still_there
from deliverer.models import Base
from tests.support.backend import (
    BACKEND,
    BACKENDS,
    PG_SERVER,
    RABBITMQ_SERVER,
    claim_redis_db,
    create_pg_database,
    create_rabbitmq_vhost,
    delete_rabbitmq_vhost,
    drop_pg_database,
    release_redis_db,
)
from tests.support.receiver import Receiver

if BACKEND not in BACKENDS:
    raise pytest.UsageError(f"DELIVERER_TEST_BACKEND must be one of {', '.join(BACKENDS)}, "
                            f"not {BACKEND!r}")

# Loopback-only timings that make the whole ladder a matter of milliseconds.
TIME_SCALE = 0.001  # 2 minutes -> 120 ms, 30 days -> 43 min
TEST_TIMINGS: dict[str, Any] = {
    "sweep_interval": 0.2,
    "sweep_horizon": 5.0,
    "lost_message_grace": 3.0,
    "lease_seconds": 5.0,  # comfortably above connect + total timeout
    "connect_timeout": 1.0,
    "total_timeout": 2.0,
}


def pytest_report_header(config: pytest.Config) -> str:
    return f"deliverer backend: {BACKEND}"


ONCE = {"unit": "unit test: runs once, in the embedded pass",
        "backend_independent": "backend-independent: runs once, in the embedded pass"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND == "embedded":
        return
    for item in items:
        for marker, reason in ONCE.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


# --------------------------------------------------------------------------- backend


@pytest.fixture(scope="session")
def backend_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("deliverer-data")
    if BACKEND == "embedded":
        yield {
            "database_url": f"sqlite:///{data_dir / 'deliverer.db'}",
            "broker_url": f"sqla+sqlite:///{data_dir / 'broker.db'}",
            "data_dir": data_dir,
        }
        return

    name = create_pg_database()
    if BACKEND == "rabbitmq":
        vhost = create_rabbitmq_vhost()
        broker_url = f"{RABBITMQ_SERVER}/{vhost}"
    else:
        broker_url, redis_db = claim_redis_db()
    try:
        yield {
            "database_url": f"{PG_SERVER}/{name}",
            "broker_url": broker_url,
            "data_dir": data_dir,
        }
    finally:
        reset_database()
        drop_pg_database(name)
        if BACKEND == "rabbitmq":
            delete_rabbitmq_vhost(vhost)
        else:
            release_redis_db(redis_db)


@pytest.fixture(scope="session")
def settings(backend_urls: dict[str, Any]) -> Settings:
    """The session's Settings, installed process-wide, with the schema migrated."""
    base = Settings.from_env({
        "DATABASE_URL": backend_urls["database_url"],
        "CELERY_BROKER_URL": backend_urls["broker_url"],
        "DELIVERER_DATA_DIR": str(backend_urls["data_dir"]),
        "DELIVERER_ALLOW_PRIVATE_URLS": "1",
        "DELIVERER_TIME_SCALE": str(TIME_SCALE),
    })
    result = base.with_overrides(**TEST_TIMINGS)
    deliverer.config.set_settings(result)
    migrate.upgrade(result)
    return result


@contextmanager
def overridden_settings(base: Settings, **changes: Any) -> Iterator[Settings]:
    """Install ``base`` with ``changes`` process-wide (the worker reads them too)."""
    changed = base.with_overrides(**changes)
    deliverer.config.set_settings(changed)
    try:
        yield changed
    finally:
        deliverer.config.set_settings(base)


@pytest.fixture
def override_settings(settings: Settings) -> Iterator[Any]:
    """``with override_settings(ladder=...) as s:`` for the length of a test."""
    yield lambda **changes: overridden_settings(settings, **changes)
    deliverer.config.set_settings(settings)


# --------------------------------------------------------------------------- celery


@pytest.fixture(scope="session")
def celery_app(settings: Settings) -> Iterator[Celery]:
    app = make_celery(settings)
    app.set_current()
    app.set_default()
    app.finalize()
    # Declare the queues once so purges and publishes find them.
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.amqp.queues.values():
            queue.bind(channel).declare()
    yield app


@pytest.fixture(scope="session")
def worker(celery_app: Celery) -> Iterator[Any]:
    """One real Celery worker (threads pool) consuming every deliverer queue."""
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        queues=list(queues.ALL),
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as w:
        yield w


@pytest.fixture(scope="session")
def purge_connection(celery_app: Celery) -> Iterator[Connection]:
    """The broker connection the clean-up before each test purges the queues on.

    One for the session: a new one per test cost 30-70 ms on Redis (redis-py reads its
    own version from the package metadata for each new connection), before every test
    of the production pass.
    """
    conn = celery_app.connection_for_write()
    try:
        yield conn
    finally:
        conn.release()


def purge_broker(conn: Connection) -> None:
    for attempt in range(2):
        try:
            channel = conn.default_channel
            for name in queues.ALL:
                channel.queue_purge(name)
            return
        except conn.connection_errors:
            if attempt == 1:
                raise
            conn.close()  # dropped by the broker (an idle timeout): connect again, once


@pytest.fixture
def published_tasks() -> Iterator[list[dict[str, Any]]]:
    """Every task message published while the test runs: name, args, eta, queue."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(sender: str | None = None, body: Any = None, headers: dict[str, Any] | None = None,
               routing_key: str | None = None, **_: Any) -> None:
        headers = headers or {}
        with lock:
            seen.append({
                "task": headers.get("task", sender),
                "args": list(body[0]) if isinstance(body, tuple | list) else [],
                "eta": headers.get("eta"),
                "queue": routing_key,
                "thread": threading.get_ident(),
            })

    before_task_publish.connect(record, weak=False)
    try:
        yield seen
    finally:
        before_task_publish.disconnect(record)


# --------------------------------------------------------------------------- isolation


def truncate_all() -> None:
    """Empty every table, children before parents.

    DELETE rather than TRUNCATE: on PostgreSQL, TRUNCATE of these small tables costs
    ~30 times more, and it runs before every test. The session's worker may still be
    finishing a delivery of the previous test, so on PostgreSQL writers are locked out
    for the length of the cleanup (SQLite's BEGIN IMMEDIATE already does that), and a
    cleanup that lost a deadlock to such a writer is simply run again.
    """
    engine = get_database().engine
    tables = list(reversed(Base.metadata.sorted_tables))
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    names = ", ".join(f'"{t.name}"' for t in tables)
                    conn.exec_driver_sql(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")
                for table in tables:
                    conn.execute(table.delete())
            return
        except DBAPIError:
            if attempt == 4:
                raise
            time.sleep(0.1)


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> None:
    """Empty tables and broker queues before every non-unit test."""
    if request.node.get_closest_marker("unit") is not None:
        return
    settings: Settings = request.getfixturevalue("settings")
    app: Celery = request.getfixturevalue("celery_app")
    if deliverer.config.get_settings() is not settings:  # a test left an override behind
        deliverer.config.set_settings(settings)
    app.set_current()
    app.set_default()
    truncate_all()
    purge_broker(request.getfixturevalue("purge_connection"))
    slow_lane.GATE.reset()
    pacing.TAILS.reset()
    still_there.ENDPOINTS.reset()
    deliverer.stopping.end()  # a test of a stopping worker that failed midway


# --------------------------------------------------------------------------- receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    # Failed deliveries are expected in these tests; keep the output readable.
    logging.getLogger("deliverer").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def data_dir(backend_urls: dict[str, Any]) -> Path:
    return Path(backend_urls["data_dir"])
