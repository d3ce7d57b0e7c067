"""Lists bound at execution (``deliverer.models.in_list``): the same rows as an IN on
every backend, and on PostgreSQL one SQL text whatever the list's length (so that a
prepared statement is prepared once)."""

from __future__ import annotations

from sqlalchemy import event, select

from deliverer.db import get_database, session_scope
from deliverer.models import Partner
from deliverer.models.in_list import in_list, pairs_bound, pairs_in_list
from tests.support import helpers as h

URL = "http://127.0.0.1:9/never-dialled"

BY_ID = select(Partner.id).where(in_list(Partner.id, "ids")).order_by(Partner.id)
# Pairs of (id, name): a partner matches only with its own name.
BY_PAIR = (select(Partner.id).where(pairs_in_list(Partner.id, Partner.name, "pairs"))
           .order_by(Partner.id))


def test_the_rows_of_the_list_whatever_its_length(settings):
    ids = sorted(h.new_partner(settings, URL, f"List {i}").partner_id for i in range(3))
    statements: list[str] = []
    engine = get_database().engine

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with session_scope() as session:
            assert session.scalars(BY_ID, {"ids": []}).all() == []
            assert session.scalars(BY_ID, {"ids": ids[:1]}).all() == ids[:1]
            assert session.scalars(BY_ID, {"ids": [*ids, "not-an-id"]}).all() == ids
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    if engine.dialect.name == "postgresql":
        assert len(set(statements)) == 1


def test_pairs_match_only_together(settings):
    a = h.new_partner(settings, URL, "Pair A").partner_id
    b = h.new_partner(settings, URL, "Pair B").partner_id
    with session_scope() as session:
        def found(pairs: list[tuple[str, str]]) -> list[str]:
            return session.scalars(BY_PAIR, pairs_bound("pairs", pairs)).all()

        assert found([(a, "Pair A")]) == [a]
        assert found([(a, "Pair B"), (b, "Pair A")]) == []  # each id, the other's name
        assert found([(a, "Pair A"), (b, "Pair B")]) == sorted([a, b])
        assert found([]) == []
