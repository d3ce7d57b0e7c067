"""Server-side prepared statements on PostgreSQL with psycopg2, for hot statements whose
planning costs more than their execution.

psycopg2 sends every statement as text, which PostgreSQL parses and plans each time: for
a publish's statement of data-modifying CTEs (``publishing/one_statement.py``) that was
two thirds of its time on the server. A statement marked with ``prepared(statement)`` is
run as ``EXECUTE`` of a statement prepared once per connection (``PREPARE``, sent with the
first ``EXECUTE``): PostgreSQL keeps its plan (a generic one after five runs).

Everything else is as for any statement: SQLAlchemy compiles it and processes its
parameters, and event listeners see its SQL; only the text sent to the server changes,
at the last step (the dialect's ``do_execute``). Only in autocommit, where a statement
that failed did nothing, so that one the server no longer knows (a pooler in
transaction mode gave another server connection, ``DISCARD ALL``) is prepared and run
again. Prepared names carry a hash of the SQL, so that two versions of the code sharing
server connections through a pooler never run each other's statement.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.sql.base import Executable
from sqlalchemy.types import NullType

_OPTION = "deliverer_prepared"
_NAMES = "deliverer_prepared_names"  # on the DBAPI connection's info: prepared there
_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s")

S = TypeVar("S", bound=Executable)


def prepared(statement: S) -> S:
    """``statement``, to be run as a prepared statement where ``install`` was (ignored
    elsewhere and outside autocommit)."""
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
        type_ = compiled.binds[unescaped.get(name, name)].type
        # Untyped: PostgreSQL infers the type from where the parameter is used.
        types.append("unknown" if isinstance(type_, NullType)
                     else context.dialect.type_compiler_instance.process(type_))
    name = "deliverer_" + hashlib.sha1(statement.encode()).hexdigest()[:20]
    texts = _Texts(name, f"PREPARE {name} ({', '.join(types)}) AS {body}",
                   f"EXECUTE {name} ({', '.join(f'%({n})s' for n in names)})")
    _TEXTS[statement] = texts
    return texts


def _execute(cursor: DBAPICursor, statement: str, parameters: Any,
             context: ExecutionContext) -> bool:
    if not context.execution_options.get(_OPTION) or not getattr(
            cursor.connection, "autocommit", False):
        return False
    from psycopg2 import errors  # imported where psycopg2 is the driver

    texts = _texts(statement, context)
    known: set[str] = context.root_connection.connection.info.setdefault(_NAMES, set())
    if texts.name in known:
        try:
            cursor.execute(texts.execute, parameters)
            return True
        except errors.InvalidSqlStatementName:
            known.discard(texts.name)  # not on this server connection: prepared below
    try:
        cursor.execute(f"{texts.prepare}; {texts.execute}", parameters)
    except errors.DuplicatePreparedStatement:
        cursor.execute(texts.execute, parameters)
    known.add(texts.name)
    return True
