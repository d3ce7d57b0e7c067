"""Prepared statements (``deliverer.prepared``): a marked statement runs as ``EXECUTE`` of
a statement prepared once per connection, and is prepared again where the server no
longer has it (a pooler's other server connection, ``DISCARD ALL``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, String, bindparam, event, select

from deliverer.db import get_database
from deliverer.models.base import constant
from deliverer.prepared import prepared
from tests.support.messages import WAKE_UPS

pytestmark = pytest.mark.skipif(not WAKE_UPS, reason="PostgreSQL (psycopg2) only")

# A parameter typed by nothing (PostgreSQL infers it from its use), a constant holding a
# % (psycopg2's placeholder character), and a typed parameter.
STATEMENT = prepared(select(bindparam("n") + constant(1), constant("50% off"),
                            bindparam("maybe", type_=String())))


def fresh(connection: Connection) -> Connection:
    """The connection as if new (pooled, it may have run the statement before)."""
    connection.exec_driver_sql("DEALLOCATE ALL")
    connection.connection.info.clear()
    return connection


@pytest.fixture
def connection() -> Iterator[Connection]:
    """One connection throughout (the pool would hand out any), in autocommit."""
    with get_database().engine.connect() as connection:
        yield fresh(connection.execution_options(isolation_level="AUTOCOMMIT"))


def run(connection: Connection, n: int) -> tuple:
    return tuple(connection.execute(STATEMENT, {"n": n, "maybe": None}).one())


def executions(connection: Connection) -> list[int]:
    """How many times each statement this connection prepared has been run."""
    return connection.exec_driver_sql(
        "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
        "WHERE name LIKE 'deliverer_%%'").scalars().all()


def test_a_marked_statement_is_prepared_once_and_executed(connection):
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(connection, "before_cursor_execute", seen)
    assert [run(connection, n) for n in range(3)] == [(n + 1, "50% off", None)
                                                      for n in range(3)]
    event.remove(connection, "before_cursor_execute", seen)
    assert executions(connection) == [3]
    # Listeners see the statement's own SQL, whatever the server is sent.
    assert len(statements) == 3 and all(s.startswith("SELECT") for s in statements)


def test_a_statement_the_server_no_longer_has_is_prepared_again(connection):
    assert run(connection, 1) == (2, "50% off", None)
    connection.exec_driver_sql("DEALLOCATE ALL")
    assert run(connection, 2) == (3, "50% off", None)  # EXECUTE failed: PREPARE, EXECUTE
    assert executions(connection) == [1]


def test_one_the_connection_forgot_it_prepared_is_executed(connection):
    assert run(connection, 1) == (2, "50% off", None)
    connection.connection.info.clear()
    assert run(connection, 2) == (3, "50% off", None)  # PREPARE failed (it exists): EXECUTE
    assert executions(connection) == [2]


def test_in_a_transaction_it_runs_as_any_statement():
    with get_database().engine.connect() as connection:
        assert run(fresh(connection), 5) == (6, "50% off", None)
        assert executions(connection) == []
        connection.rollback()
