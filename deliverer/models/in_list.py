"""Membership in a list bound at execution, in one statement text on PostgreSQL.

An expanding IN renders a placeholder per member, so each length of the list is another
SQL text: PostgreSQL parses and plans it again, SQLAlchemy renders it again, and a
prepared statement (``deliverer.prepared``) would be prepared once per length. On
PostgreSQL these render ``= ANY(array)`` and ``IN (SELECT unnest(...), unnest(...))``,
one text for any length; elsewhere (SQLite) the expanding IN.

Bind a list under its name; bind pairs with ``pairs_bound`` (PostgreSQL takes them as
two arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, ColumnElement, any_, bindparam, func, select, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

Column = ColumnElement[Any] | QueryableAttribute[Any]


def _element(column: Column) -> ColumnElement[Any]:
    return column if isinstance(column, ColumnElement) else column.__clause_element__()


class in_list(ColumnElement[bool]):
    """``column IN (the list bound as name)``."""

    type = Boolean()
    _is_implicitly_boolean = True  # a comparison: no "= 1" where booleans are integers
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement),
                           ("name", InternalTraversal.dp_string)]

    def __init__(self, column: Column, name: str) -> None:
        self.column = _element(column)
        self.name = name

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects


class pairs_in_list(ColumnElement[bool]):
    """``(first, second) IN (the pairs bound as name)``, bound with ``pairs_bound``."""

    type = Boolean()
    _is_implicitly_boolean = True
    _traverse_internals = [("first", InternalTraversal.dp_clauseelement),
                           ("second", InternalTraversal.dp_clauseelement),
                           ("name", InternalTraversal.dp_string)]

    def __init__(self, first: Column, second: Column, name: str) -> None:
        self.first = _element(first)
        self.second = _element(second)
        self.name = name

    @property
    def _from_objects(self) -> list[Any]:
        return [*self.first._from_objects, *self.second._from_objects]


def pairs_bound(name: str, pairs: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """The parameters of ``pairs_in_list(..., name)`` for ``pairs``, on every backend
    (each ignores the ones it does not use)."""
    return {name: list(pairs), f"{name}_first": [a for a, _ in pairs],
            f"{name}_second": [b for _, b in pairs]}


@compiles(in_list)
def _in_list(element: in_list, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(in_list, "postgresql")
def _in_array(element: in_list, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam(element.name, type_=postgresql.ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)


@compiles(pairs_in_list)
def _pairs_in_list(element: pairs_in_list, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(tuple_(element.first, element.second).in_(
        bindparam(element.name, expanding=True)), **kw)


@compiles(pairs_in_list, "postgresql")
def _pairs_in_arrays(element: pairs_in_list, compiler: SQLCompiler, **kw: Any) -> str:
    arrays = (func.unnest(bindparam(f"{element.name}_{side}",
                                    type_=postgresql.ARRAY(column.type)))
              for side, column in (("first", element.first), ("second", element.second)))
    return compiler.process(tuple_(element.first, element.second).in_(select(*arrays)),
                            **kw)
