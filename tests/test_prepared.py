"""Prepared statements (``deliverer.prepared``): a marked statement runs as ``EXECUTE`` of
a statement prepared once per connection, and is prepared again where the server no
longer has it (a pooler's other server connection, ``DISCARD ALL``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from psycopg2 import errors
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    column,
    event,
    select,
    table,
)
from sqlalchemy.exc import DataError

import deliverer.db
import deliverer.prepared
from deliverer.db import get_database, in_transaction, reset_database, session_scope
from deliverer.models.base import constant
from deliverer.models.in_list import in_list
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


_PROBE = Table("replan_probe", MetaData(), Column("id", Integer, primary_key=True))
LOOKUP = prepared(select(_PROBE.c.id).where(in_list(_PROBE.c.id, "ids")))


def plan_of_lookup(connection: Connection) -> str:
    name = next(t.name for t in deliverer.prepared._TEXTS.values()
                if "replan_probe" in t.prepare)
    return "\n".join(connection.exec_driver_sql(f"EXPLAIN EXECUTE {name} (%(ids)s)",
                                                 {"ids": [1]}).scalars())


def test_its_plan_is_made_again_from_the_tables_size_then(connection, monkeypatch):
    """A plan made while its table was empty reads the table whole; prepared again
    after REPLAN_AFTER, the statement is planned for the table as it is then, though
    nothing analyzed it (a temporary table: as on a server without autovacuum)."""
    # Rows as wide as a notification's, to the planner (a NULL takes no room).
    connection.exec_driver_sql("CREATE TEMPORARY TABLE replan_probe "
                               "(id integer PRIMARY KEY, wide char(500))")
    connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")  # at its 1st run
    try:
        assert connection.execute(LOOKUP, {"ids": [1]}).all() == []
        assert "Seq Scan" in plan_of_lookup(connection)
        connection.exec_driver_sql("INSERT INTO replan_probe SELECT generate_series(1, 100000)")
        assert connection.execute(LOOKUP, {"ids": [1]}).all() == [(1,)]
        assert "Seq Scan" in plan_of_lookup(connection)  # the plan is kept
        monkeypatch.setattr(deliverer.prepared, "REPLAN_AFTER", 0.0)
        assert connection.execute(LOOKUP, {"ids": [2]}).all() == [(2,)]
        assert "Index" in plan_of_lookup(connection)
        assert executions(connection) == [2]  # a run and an EXPLAIN since prepared again
    finally:
        connection.exec_driver_sql("RESET plan_cache_mode")
        connection.exec_driver_sql("DROP TABLE replan_probe")


class _SwitchingCursor:
    """A transaction pooler's client: after the PREPARE fails (this server connection
    has the statement), the next statement lands on a server connection without it."""

    def __init__(self, cursor: Any) -> None:
        self.cursor, self.connection, self.switch = cursor, cursor.connection, False

    def execute(self, sql: str, parameters: Any = None) -> None:
        if self.switch:
            self.cursor.execute("DEALLOCATE ALL")
            self.switch = False
        try:
            self.cursor.execute(sql, parameters)
        except errors.DuplicatePreparedStatement:
            self.switch = True
            raise


@contextmanager
def prepared_through(wrapper: Any) -> Iterator[None]:
    """``deliverer.prepared`` sends through ``wrapper(cursor)`` instead of the cursor."""
    engine = get_database().engine
    real = deliverer.prepared._execute

    def through(cursor, statement, parameters, context):  # type: ignore[no-untyped-def]
        return real(wrapper(cursor), statement, parameters, context)

    event.remove(engine, "do_execute", real)
    event.listen(engine, "do_execute", through)
    try:
        yield
    finally:
        event.remove(engine, "do_execute", through)
        event.listen(engine, "do_execute", real)


def test_after_a_pooler_switch_between_the_two_tries_it_is_prepared_again(connection):
    assert run(connection, 1) == (2, "50% off", None)  # prepared on this server connection
    connection.connection.info.clear()  # by a client that never prepared it
    with prepared_through(_SwitchingCursor):
        assert run(connection, 2) == (3, "50% off", None)


class _RefusingCursor:
    """A server that has every statement when asked to prepare it, and none when asked
    to execute it."""

    def __init__(self, cursor: Any) -> None:
        self.connection = cursor.connection

    def execute(self, sql: str, parameters: Any = None) -> None:
        if "PREPARE" in sql:
            raise errors.DuplicatePreparedStatement()
        raise errors.InvalidSqlStatementName()


def test_in_autocommit_after_three_refusals_it_is_sent_as_text(connection):
    with prepared_through(_RefusingCursor):
        assert run(connection, 4) == (5, "50% off", None)
    assert executions(connection) == []


def test_a_statement_whose_result_type_a_migration_changed_is_prepared_again(connection):
    connection.exec_driver_sql("CREATE TEMPORARY TABLE prepared_probe (v varchar(8))")
    connection.exec_driver_sql("INSERT INTO prepared_probe VALUES ('a')")
    probe = table("prepared_probe", column("v"))
    statement = prepared(select(probe.c.v, bindparam("n", type_=String())))
    assert tuple(connection.execute(statement, {"n": "1"}).one()) == ("a", "1")
    connection.exec_driver_sql("ALTER TABLE prepared_probe ALTER COLUMN v TYPE text")
    # PostgreSQL: "cached plan must not change result type"; deallocated, prepared again.
    assert tuple(connection.execute(statement, {"n": "2"}).one()) == ("a", "2")


# ------------------------------------------------ in transactions that are run again


@pytest.fixture
def pool_of_one(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The process's database with a pool of one connection, fresh: every transaction
    (``in_transaction``'s too) runs on it, and it is yielded between them to look at."""
    real = deliverer.db.create_engine
    monkeypatch.setattr(deliverer.db, "create_engine", lambda url, **kw: real(
        url, **{**kw, "pool_size": 1, "max_overflow": 0}))
    reset_database()
    with get_database().engine.connect() as connection:
        fresh(connection.execution_options(isolation_level="AUTOCOMMIT"))
    try:
        yield get_database().engine
    finally:
        reset_database()


def runs_of(statement: Any, parameters: dict[str, Any]) -> tuple[list[tuple], int]:
    """``statement`` run by ``in_transaction``: its rows and how many runs it took."""
    runs = 0

    def work(session: Any) -> list[tuple]:
        nonlocal runs
        runs += 1
        return [tuple(r) for r in session.connection().execute(statement, parameters)]

    return in_transaction(work), runs


def prepared_here(engine: Any) -> list[int]:
    with engine.connect() as connection:
        return executions(connection)


def test_in_a_transaction_run_again_it_is_prepared_once_and_executed(pool_of_one):
    for n in range(3):
        assert runs_of(STATEMENT, {"n": n, "maybe": None}) == ([(n + 1, "50% off", None)], 1)
    assert prepared_here(pool_of_one) == [3]
    # A transaction that is not run again sends it as text.
    with session_scope() as session:
        assert tuple(session.connection().execute(STATEMENT, {"n": 7, "maybe": None}).one()
                     ) == (8, "50% off", None)
    assert prepared_here(pool_of_one) == [3]


def test_a_transaction_whose_statement_the_server_lost_is_run_again(pool_of_one):
    runs_of(STATEMENT, {"n": 1, "maybe": None})
    with pool_of_one.connect() as connection:
        connection.exec_driver_sql("DEALLOCATE ALL")
    # EXECUTE failed and aborted the transaction; run again, as text.
    assert runs_of(STATEMENT, {"n": 2, "maybe": None}) == ([(3, "50% off", None)], 2)
    assert prepared_here(pool_of_one) == []
    # The next transaction prepares it afresh.
    assert runs_of(STATEMENT, {"n": 3, "maybe": None}) == ([(4, "50% off", None)], 1)
    assert prepared_here(pool_of_one) == [1]


def test_a_transaction_on_a_connection_that_forgot_it_prepared_is_run_again(pool_of_one):
    runs_of(STATEMENT, {"n": 1, "maybe": None})
    with pool_of_one.connect() as connection:
        connection.connection.info.clear()
    # PREPARE failed (it exists) and aborted the transaction; run again, as text.
    assert runs_of(STATEMENT, {"n": 2, "maybe": None}) == ([(3, "50% off", None)], 2)
    assert runs_of(STATEMENT, {"n": 3, "maybe": None}) == ([(4, "50% off", None)], 1)
    assert prepared_here(pool_of_one) == [2]


def test_behind_a_pooler_that_switches_server_connections_every_time(pool_of_one):
    """Each transaction on a server connection without the statement, whatever this
    connection believes: each is run again once, as text, and never fails."""
    runs_of(STATEMENT, {"n": 1, "maybe": None})

    def switched(dbapi_connection, _record, _proxy):  # type: ignore[no-untyped-def]
        with dbapi_connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")

    event.listen(pool_of_one, "checkout", switched)
    try:
        for n in range(2, 6):
            rows, runs = runs_of(STATEMENT, {"n": n, "maybe": None})
            assert rows == [(n + 1, "50% off", None)]
            # Believed prepared: EXECUTE failed, run again. Believed not: prepared.
            assert runs == (2 if n % 2 == 0 else 1)
    finally:
        event.remove(pool_of_one, "checkout", switched)


def test_a_transaction_whose_plan_a_migration_changed_is_run_again(pool_of_one):
    with pool_of_one.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE prepared_probe_tx (v varchar(8))")
        connection.exec_driver_sql("INSERT INTO prepared_probe_tx VALUES ('a')")
        connection.commit()
    try:
        probe = table("prepared_probe_tx", column("v"))
        statement = prepared(select(probe.c.v, bindparam("n", type_=String())))
        assert runs_of(statement, {"n": "1"}) == ([("a", "1")], 1)
        with pool_of_one.connect() as connection:
            connection.exec_driver_sql("ALTER TABLE prepared_probe_tx ALTER COLUMN v TYPE text")
            connection.commit()
        # "cached plan must not change result type": run again as text; the next
        # transaction drops the plan and prepares it again.
        assert runs_of(statement, {"n": "2"}) == ([("a", "2")], 2)
        assert runs_of(statement, {"n": "3"}) == ([("a", "3")], 1)
        assert runs_of(statement, {"n": "4"}) == ([("a", "4")], 1)
    finally:
        with pool_of_one.connect() as connection:
            connection.exec_driver_sql("DROP TABLE prepared_probe_tx")
            connection.commit()


def test_a_statement_that_failed_after_its_prepare_is_executed_next_time(pool_of_one):
    divide = prepared(select(constant(1) / bindparam("n", type_=Integer())))
    with pytest.raises(DataError):  # division by zero: the EXECUTE's own error
        runs_of(divide, {"n": 0})
    # The PREPARE stayed (a rollback does not undo it): executed at once, not run again.
    assert runs_of(divide, {"n": 1}) == ([(1,)], 1)


def test_a_statement_with_an_in_of_constants_is_prepared(connection):
    # SQLAlchemy binds the list as one expanding parameter, sent as one per member.
    statement = prepared(select(constant(1)).where(bindparam("v", type_=String()).in_(
        ["PENDING", "FAILED"])))
    assert connection.execute(statement, {"v": "FAILED"}).scalar() == 1
    assert connection.execute(statement, {"v": "SENT"}).scalar() is None
    assert executions(connection) == [2]
