"""Engine, sessions and the after-commit hook.

One session and one transaction per task run and per request: ``session_scope`` for
tasks and the CLI, ``api.db`` for requests. Celery messages are sent only after the
transaction that made them necessary has committed (``on_commit``): a row that is due but
never enqueued is picked up by the beat sweep.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, InvalidatePoolError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from deliverer import prepared
from deliverer.config import Settings, get_settings, masked_url, on_settings_change
from deliverer.errors import DelivererError

log = logging.getLogger(__name__)

_AFTER_COMMIT = "deliverer.after_commit"

T = TypeVar("T")


@dataclass
class Database:
    engine: Engine
    # Sessions of transactions that are run again whole (``in_transaction``).
    runs_again: sessionmaker[Session]
    sessionmaker: sessionmaker[Session]

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Take over transaction control from the sqlite3 module (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits for the writer
    # instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # A deferred SQLite transaction that reads and then writes fails at once with
    # SQLITE_BUSY when another connection wrote in between; BEGIN IMMEDIATE takes the write
    # lock up front, so concurrent workers queue on busy_timeout instead of failing.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class BadDatabaseUrl(ValueError):
    """DATABASE_URL names no database deliverer can open: not a URL, a port that is not a
    number, a driver that is not installed; its message masks the password (the CLI
    says it in one line)."""


def checked_engine(url: str, **options: Any) -> Engine:
    """``create_engine``, with a URL it cannot use said as ``BadDatabaseUrl``."""
    try:
        return create_engine(url, **options)
    except (ArgumentError, ValueError, ImportError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadDatabaseUrl(
            f"DATABASE_URL={masked_url(url)} cannot be used: {first} (deliverer runs on "
            "postgresql://user:password@host:port/database or sqlite:///path)") from exc


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = checked_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = checked_engine(url, pool_size=10, max_overflow=20)
    _ping_when_idle(engine)
    if engine.dialect.driver == "psycopg2":
        event.listen(engine, "checkin", _psycopg2_default_isolation)
    prepared.install(engine)
    return engine


# A pooled connection unused for longer than this is pinged before it is handed out.
PING_IDLE_AFTER = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, for connections that sat idle: one that was checked in less than
    ``PING_IDLE_AFTER`` ago was working then, and a ping would be a round trip more in each
    of a busy process's transactions (a publish is one statement: the ping was half its
    round trips). A server restarted within that second fails the statement instead, as
    the statements in flight at the restart fail anyway: SQLAlchemy then invalidates the
    pool's older connections, and the callers' own handling applies (a record is run
    again, a claim falls to the sweep, a publish answers 503). A ping that finds the
    server gone does the same, as ``pool_pre_ping`` did."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_connection: Any, record: Any) -> None:
        record.info["deliverer.used_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used_at = record.info.get("deliverer.used_at")
        if used_at is not None and time.monotonic() - used_at < PING_IDLE_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if not engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            # The pool drops this connection and every one older (the server restarted,
            # most likely), and checks out a new one.
            raise InvalidatePoolError(str(exc)) from exc


def _psycopg2_default_isolation(dbapi_connection: Any, _record: Any) -> None:
    # After a connection ran in autocommit (``autocommitted``),
    # SQLAlchemy restores the isolation level by naming it (READ COMMITTED), and from
    # then on psycopg2 spends a round trip (SET default_transaction_isolation) each time
    # autocommit is turned off again: at every ping, and after every autocommitted
    # statement. Back to psycopg2's DEFAULT (the server's level, which is what
    # SQLAlchemy named), that costs nothing.
    if dbapi_connection is not None and not dbapi_connection.closed:
        dbapi_connection.isolation_level = None


def make_database(settings: Settings) -> Database:
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    return Database(engine=engine, sessionmaker=sessionmaker(engine, expire_on_commit=False),
                    runs_again=sessionmaker(engine.execution_options(
                        **prepared.RUN_AGAIN_OPTIONS), expire_on_commit=False))


_database: Database | None = None


def get_database() -> Database:
    global _database
    if _database is None:
        _database = make_database(get_settings())
    return _database


def reset_database() -> None:
    """Forget the process-wide engine (after the settings changed)."""
    global _database
    if _database is not None:
        _database.dispose()
    _database = None


on_settings_change(reset_database)


def dispose_after_fork() -> None:
    """A forked child must not reuse its parent's connections."""
    if _database is not None:
        _database.engine.dispose(close=False)


@contextmanager
def session_scope(*, runs_again: bool = False) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error: the
    transaction of a task run or a CLI command. A refused merchant request (an error
    carrying a ``Refusal``) is kept on the audit trail after the rollback.
    ``runs_again``: the caller runs the transaction again on ``prepared.Unprepared``."""
    database = get_database()
    session = (database.runs_again if runs_again else database.sessionmaker)()
    try:
        yield session
        session.commit()
    except BaseException as exc:
        session.rollback()
        if isinstance(exc, DelivererError) and exc.keep_refusal(session):
            session.commit()  # a refused request stays on the audit trail
        raise
    finally:
        session.close()


def in_transaction(work: Callable[[Session], T], *, retry_for: float = 0.0,
                   only_if: Callable[[OperationalError], bool] | None = None) -> T:
    """Run ``work`` in a transaction of its own; if the database aborts it for a transient
    reason (PostgreSQL chose it as a deadlock victim, the connection was lost in a restart),
    run it again, for up to ``retry_for`` seconds.

    Such an abort rolls the whole transaction back, so running it again is safe. Delivery
    records its outcome this way: giving up would leave a POST that was made unrecorded,
    and the webhook would be sent a second time once its lease ran out.

    ``only_if`` narrows which errors are run again: work that must not run twice when the
    error may have followed its commit (a connection lost during COMMIT) passes
    ``is_transient_abort``, the aborts that certainly rolled everything back.

    Being run again whole, the transaction runs its prepared statements prepared
    (``deliverer.prepared``): one the server did not have as the connection believed
    aborts it, and it is run again at once, its statements sent as text (the next
    connection may be as wrong).
    """
    def run() -> T:
        try:
            with session_scope(runs_again=True) as session:
                return work(session)
        except prepared.Unprepared as exc:
            log.debug("prepared statement %s unknown to the server: run again as text", exc)
        with session_scope() as session:
            return work(session)

    return _run_again(run, retry_for, only_if)


def autocommitted(work: Callable[[Connection], T], *, retry_for: float = 0.0,
                  only_if: Callable[[OperationalError], bool] | None = None) -> T:
    """Run ``work`` on a connection in autocommit: each of its statements is a transaction
    of its own, committed as it ends, without the BEGIN and COMMIT round trips (work of
    one statement). Run again after a transient error as ``in_transaction``, for the
    same reasons; after-commit callbacks are the caller's (``run_after_commit``)."""
    def run() -> T:
        with _autocommit() as connection:
            return work(connection)

    return _run_again(run, retry_for, only_if)


@contextmanager
def _autocommit() -> Iterator[Connection]:
    with get_database().engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def _run_again(run: Callable[[], T], retry_for: float,
               only_if: Callable[[OperationalError], bool] | None) -> T:
    deadline = time.monotonic() + retry_for
    pause = 0.05
    while True:
        try:
            return run()
        except OperationalError as exc:
            if time.monotonic() + pause > deadline or (only_if is not None
                                                       and not only_if(exc)):
                raise
            log.warning("transaction aborted, running it again: %s",
                        str(exc.orig or exc).splitlines()[0])
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 1.0)


def on_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once the session's current transaction has committed."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    run_after_commit(session.info.pop(_AFTER_COMMIT, []))


def run_after_commit(callbacks: Iterable[Callable[[], object]]) -> None:
    """Run what a committed transaction made necessary (enqueue its messages)."""
    for callback in callbacks:
        # A failed enqueue must not undo a commit that already happened; the beat sweep
        # re-enqueues anything due, so log loudly and carry on with the next callback.
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed; the beat sweep will catch up")


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def is_transient_abort(exc: BaseException) -> bool:
    """A deadlock victim or serialization failure: rolled back whole, safe to run again."""
    return getattr(getattr(exc, "orig", None), "pgcode", None) in ("40P01", "40001")
