"""Server-side prepared statements on PostgreSQL with psycopg2, for hot statements whose
planning costs more than their execution.

psycopg2 sends every statement as text, which PostgreSQL parses and plans each time: for
a publish's statement of data-modifying CTEs (``publishing/one_statement.py``) that was
two thirds of its time on the server. A statement marked with ``prepared(statement)`` is
run as ``EXECUTE`` of a statement prepared once per connection (``PREPARE``, sent with the
first ``EXECUTE``): PostgreSQL keeps its plan (a generic one after five runs), and it is
prepared again every ``REPLAN_AFTER`` seconds, planned for the tables as they have grown.
Its SQL must be one text whatever its parameters (no expanding IN: ``models.in_list``).

Everything else is as for any statement: SQLAlchemy compiles it and processes its
parameters, and event listeners see its SQL; only the text sent to the server changes,
at the last step (the dialect's ``do_execute``). Prepared names carry a hash of the SQL,
so that two versions of the code sharing server connections through a pooler never run
each other's statement.

Where the server no longer knows a statement (a pooler in transaction mode gave another
server connection, ``DISCARD ALL``), knows one this connection never prepared (a pooler's
earlier client), or holds a plan whose result type a migration changed, the statement is
prepared again. In autocommit, where a statement that failed did nothing, at once. In a
transaction, the failure aborted it: only transactions that can be run again whole use
prepared statements (``db.in_transaction`` marks its connections with
``RUN_AGAIN_OPTIONS``), and the failure raises ``Unprepared``, on which the transaction
is run again with its statements sent as text (the pool may hand it another connection,
as wrong about it as this one was); elsewhere a marked statement is sent as text.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.sql.base import Executable
from sqlalchemy.types import NullType

_OPTION = "deliverer_prepared"
_RUNS_AGAIN = "deliverer_runs_again"
# On the DBAPI connection's info: the names prepared there (with when), and the names
# whose plan is to be dropped before they are prepared again.
_NAMES = "deliverer_prepared_names"
_STALE = "deliverer_prepared_stale"
_TRIES = 3
# PostgreSQL keeps a statement's plan until an ANALYZE of its tables: one made while
# they were small (after a deploy, or a restore) may scan them whole where an index
# would do, and on a server whose autovacuum is off it stays so. Planned again this often
# (seconds), from the tables' size then.
REPLAN_AFTER = 300.0
_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s")

S = TypeVar("S", bound=Executable)


# A connection's execution options for a transaction that is run again whole after
# ``Unprepared``.
RUN_AGAIN_OPTIONS = {_RUNS_AGAIN: True}


class Unprepared(Exception):
    """A prepared statement failed in a transaction because the server did not have it
    as this connection believed: the transaction is aborted, and is to be run again
    (``db.in_transaction`` runs it with its statements sent as text)."""


def prepared(statement: S) -> S:
    """``statement``, to be run as a prepared statement where ``install`` was, in
    autocommit and in transactions marked with ``RUN_AGAIN_OPTIONS`` (sent as text
    elsewhere)."""
    return statement.execution_options(**{_OPTION: True})


def install(engine: Engine) -> None:
    if engine.dialect.driver == "psycopg2":
        event.listen(engine, "do_execute", _execute)


@dataclass(frozen=True)
class _Texts:
    name: str
    prepare: str  # PREPARE name (types) AS the statement, its placeholders numbered
    execute: str  # EXECUTE name (its parameters, as psycopg2 placeholders)


_TEXTS: dict[str, _Texts] = {}


def _texts(statement: str, context: ExecutionContext) -> _Texts:
    texts = _TEXTS.get(statement)
    if texts is not None:
        return texts
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    body = _PLACEHOLDER.sub(number, statement)
    compiled: Any = context.compiled
    unescaped = {v: k for k, v in (compiled.escaped_bind_names or {}).items()}
    types = []
    for name in names:
        # Untyped, or a member of an IN of constants (status_1_1, status_1_2 for the
        # list bound as status_1): PostgreSQL infers the type from where it is used.
        bind = compiled.binds.get(unescaped.get(name, name))
        types.append("unknown" if bind is None or isinstance(bind.type, NullType)
                     else context.dialect.type_compiler_instance.process(bind.type))
    name = "deliverer_" + hashlib.sha1(statement.encode()).hexdigest()[:20]
    texts = _Texts(name, f"PREPARE {name} ({', '.join(types)}) AS {body}",
                   f"EXECUTE {name} ({', '.join(f'%({n})s' for n in names)})")
    _TEXTS[statement] = texts
    return texts


def _execute(cursor: DBAPICursor, statement: str, parameters: Any,
             context: ExecutionContext) -> bool:
    options = context.execution_options
    if not options.get(_OPTION):
        return False
    autocommit = getattr(cursor.connection, "autocommit", False)
    if not autocommit and not options.get(_RUNS_AGAIN):
        return False
    texts = _texts(statement, context)
    info = context.root_connection.connection.info
    state = (info.setdefault(_NAMES, {}), info.setdefault(_STALE, set()))
    if not autocommit:
        _try(cursor, texts, parameters, *state)
        return True
    # Each failure did nothing (autocommit) and changed what the next try sends. Bounded:
    # then sent as text, as any statement.
    for _ in range(_TRIES):
        try:
            _try(cursor, texts, parameters, *state)
            return True
        except Unprepared:
            continue
    return False


def _try(cursor: DBAPICursor, texts: _Texts, parameters: Any, known: dict[str, float],
         stale: set[str]) -> None:
    """EXECUTE where this connection prepared the statement (less than REPLAN_AFTER
    ago), else PREPARE and EXECUTE (after dropping a stale plan). Where the server
    disagreed, ``known`` and ``stale`` are put right for the next try, and
    ``Unprepared`` is raised."""
    from psycopg2 import errors  # imported where psycopg2 is the driver

    name = texts.name
    if name in known and time.monotonic() - known[name] > REPLAN_AFTER:
        del known[name]
        stale.add(name)
    if name in known:
        try:
            cursor.execute(texts.execute, parameters)
        except errors.InvalidSqlStatementName as exc:
            # Not on this server connection (a pooler gave another one, DISCARD ALL).
            del known[name]
            raise Unprepared(name) from exc
        except errors.FeatureNotSupported as exc:
            # "cached plan must not change result type": a migration changed a column
            # the statement returns. Dropped, and prepared again from the current schema.
            del known[name]
            stale.add(name)
            raise Unprepared(name) from exc
        return
    drop = f"DEALLOCATE {name}; " if name in stale else ""
    try:
        cursor.execute(f"{drop}{texts.prepare}; {texts.execute}", parameters)
    except errors.DuplicatePreparedStatement as exc:
        # Prepared on this server connection by an earlier client of a pooler.
        _prepared_there(name, known, stale)
        raise Unprepared(name) from exc
    except errors.InvalidSqlStatementName as exc:
        # The stale plan was dropped already (a pooler's other client).
        stale.discard(name)
        raise Unprepared(name) from exc
    except Exception:
        # The PREPARE ran and the EXECUTE failed (a lock wait, a deadlock): a rollback
        # does not undo a PREPARE. (Were it the PREPARE that failed, the next EXECUTE
        # fails as unknown, and it is prepared again.)
        _prepared_there(name, known, stale)
        raise
    _prepared_there(name, known, stale)


def _prepared_there(name: str, known: dict[str, float], stale: set[str]) -> None:
    known[name] = time.monotonic()
    stale.discard(name)
