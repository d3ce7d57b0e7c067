"""Database faults on the real engine: an INSERT that fails as if the connection had
dropped (the database restarting, a failover), before it runs or after its transaction
really committed (the client never hears the commit's outcome). A statement run in
autocommit (a single publish on PostgreSQL) is its own transaction: committed as it
ends, its fault comes then."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from deliverer.db import get_database


def _row_has(parameters: Any, executemany: bool, values: tuple[Any, ...]) -> bool:
    rows = parameters if executemany else [parameters]
    for row in rows:
        present = list(row.values() if isinstance(row, dict) else row)
        if all(value in present for value in values):
            return True
    return False


class Deadlock(Exception):
    """What psycopg raises for a deadlock victim (SQLSTATE 40P01)."""

    pgcode = "40P01"


@contextmanager
def failing_inserts(table: str, *values: Any, times: int | None = 1,
                    after_commit: bool = False, delay: float = 0.0,
                    deadlock: bool = False) -> Iterator[list[int]]:
    """Fail the INSERTs into ``table`` of a row holding all of ``values`` with an
    OperationalError, ``times`` times (None: every time): before the INSERT runs, or,
    with ``after_commit``, once its transaction has committed. The error is a lost
    connection, or with ``deadlock`` PostgreSQL's abort of a deadlock victim. Each fault
    surfaces only after ``delay`` seconds (a database that times out rather than
    refuses). Yields the
    faults so far.
    """
    engine = get_database().engine
    injected: list[int] = []
    # after_commit: this thread's transaction (flag) or autocommitted statement
    # (statement) is to fail
    pending = threading.local()
    prefix = f"INSERT INTO {table.upper()} "

    def fault() -> OperationalError:
        injected.append(1)
        orig = (Deadlock("deadlock detected") if deadlock
                else Exception("server closed the connection unexpectedly"))
        return OperationalError(f"INSERT INTO {table} ...", {}, orig)

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        if times is not None and len(injected) >= times:
            return
        # Anywhere in the statement: a single publish inserts its event in a CTE.
        if prefix not in statement.upper():
            return
        if not _row_has(parameters, executemany, values):
            return
        if after_commit:
            if getattr(conn.connection.dbapi_connection, "autocommit", False) is True:
                pending.statement = True
            else:
                pending.flag = True
        else:
            time.sleep(delay)
            raise fault()

    def commit(conn: Any) -> None:
        if getattr(pending, "flag", False):
            pending.flag = False
            conn.connection.dbapi_connection.commit()  # committed, and yet the client
            time.sleep(delay)                           # hears of an error
            raise fault()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
              executemany: bool) -> None:
        if getattr(pending, "statement", False):
            pending.statement = False  # committed by the database as it ended
            time.sleep(delay)
            raise fault()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "commit", commit)
    try:
        yield injected
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
        event.remove(engine, "commit", commit)
