"""The pool pings a connection before handing it out only when it sat idle
(``deliverer.db._ping_when_idle``): a dead idle connection is replaced unseen, a busy one
costs no round trip more, and one that died while busy fails its statement once, after
which the pool hands out working connections again."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from deliverer import db
from tests.support.backend import PG_SERVER
from tests.support.messages import WAKE_UPS

pytestmark = pytest.mark.skipif(not WAKE_UPS, reason="PostgreSQL's pool only")


@pytest.fixture
def engine(settings) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """An engine of its own, so that the connection checked out is the one it held."""
    engine = db.make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch) -> list[object]:  # type: ignore[no-untyped-def]
    seen: list[object] = []
    real = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        seen.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return seen


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def terminate(pid: int, settings) -> None:  # type: ignore[no-untyped-def]
    """As a server restart would, from outside the pool."""
    name = settings.database_url.rsplit("/", 1)[1]
    with psycopg2.connect(f"{PG_SERVER}/{name}") as killer, killer.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        assert cursor.fetchone() == (True,)
    killer.close()


def test_a_connection_used_a_moment_ago_is_not_pinged(engine, pings, monkeypatch):
    monkeypatch.setattr(db, "PING_IDLE_AFTER", 60.0)
    pids = {backend_pid(engine) for _ in range(5)}
    assert len(pids) == 1  # the same connection each time: a new one is never pinged
    assert pings == []


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(engine, pings, settings,
                                                              monkeypatch):
    monkeypatch.setattr(db, "PING_IDLE_AFTER", 60.0)
    with engine.connect() as connection:
        first = int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        record = connection.connection._connection_record
    terminate(first, settings)
    # As if checked in long ago: the next checkout pings it, finds it dead, drops it
    # (and every pooled connection as old) and hands out a new one, unpinged: no error.
    assert record is not None
    record.info["deliverer.used_at"] -= 120.0
    assert backend_pid(engine) != first
    assert len(pings) == 1


def test_a_busy_connection_that_died_fails_once_then_the_pool_recovers(engine, pings,
                                                                       settings,
                                                                       monkeypatch):
    monkeypatch.setattr(db, "PING_IDLE_AFTER", 60.0)
    first = backend_pid(engine)
    terminate(first, settings)
    with pytest.raises(OperationalError) as failed:
        backend_pid(engine)
    assert failed.value.connection_invalidated
    assert backend_pid(engine) != first
    assert pings == []
