"""The portal's pages stay fast with 100,000 notifications per merchant: every query its
pages run is planned by PostgreSQL on an index, never a full scan of the large tables.

Two merchants of 100,000 notifications each (events, attempts spread over 70 days, a
few FAILED and held), ANALYZEd; the page queries are captured as the portal's services
send them (``deliverer.portal.queries``), then EXPLAINed with their parameters. Also
timed, as a guard against a plan that uses an index and still reads everything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text

from deliverer.db import get_database, session_scope
from deliverer.models import Base, Endpoint, Notification, NotificationStatus, utcnow
from deliverer.portal import queries
from tests.support import helpers as h
from tests.support.backend import ON_POSTGRES

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ON_POSTGRES, reason="EXPLAIN plans: PostgreSQL")]

PER_MERCHANT = 100_000
# Read whole, a table of fewer rows can be the cheapest plan, and the right one.
LARGE_ROWS = 10_000
# A page's queries, all together, on this machine (loaded by other jobs too).
PAGE_BUDGET = 1.0

FILL = """
INSERT INTO events (id, partner_id, type, reference, payload, body, created_at)
SELECT md5(:pid || i)::uuid::text, :pid,
       CASE WHEN i % 5 = 0 THEN 'invoice.settled' ELSE 'transaction.paid' END,
       'REF-' || i, '{"amount": 1000}'::json, '{}', now() - i * interval '1 minute'
FROM generate_series(1, :n) AS i;
INSERT INTO notifications (id, partner_id, event_id, endpoint_id, sequence, url, status,
    retry_attempts, manual_retry_count, attempt_count, cycle_started_at, lane, held,
    created_at, updated_at, next_attempt_at, latest_error_payload)
SELECT md5('n' || :pid || i)::uuid::text, :pid, md5(:pid || i)::uuid::text, :endpoint, i,
       :url,
       CASE WHEN i <= 300 THEN 'FAILED' WHEN i % 97 = 0 THEN 'NOT_SENT' ELSE 'SENT' END,
       0, 0, 1, now() - i * interval '1 minute', 'first', i > 1 AND i <= 300,
       now() - i * interval '1 minute', now() - i * interval '1 minute',
       CASE WHEN i = 1 THEN now() + interval '2 minutes' END,
       CASE WHEN i <= 300 THEN '{"message": "HTTP 503", "hint": "down"}'::json END
FROM generate_series(1, :n) AS i;
INSERT INTO attempts (notification_id, trigger, url, started_at, duration_ms, success,
    response_status)
SELECT md5('n' || :pid || i)::uuid::text, 'automatic', :url,
       now() - i * interval '1 minute', 40, i > 300, CASE WHEN i <= 300 THEN 503 ELSE 200 END
FROM generate_series(1, :n) AS i;
UPDATE endpoints SET last_sequence = :n, failing_since = now() - interval '5 hours'
WHERE id = :endpoint;
"""


@pytest.fixture
def truncated_after() -> Iterator[None]:
    """TRUNCATE every table afterwards: the next test's clean-up (DELETE, cheaper on small
    tables) took 7 s on these 600,000 rows, and left them dead in the tables the rest of
    the session reads."""
    yield
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with get_database().engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {names}")


def _merchant(settings: Any, name: str) -> tuple[str, Endpoint]:
    partner = h.new_partner(settings, f"http://127.0.0.1:9/{name}", name=name)
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(
            Endpoint.partner_id == partner.partner_id))
        assert endpoint is not None
        session.expunge(endpoint)
    with get_database().engine.begin() as conn:
        for statement in FILL.strip().split(";\n"):
            conn.execute(text(statement), {"pid": partner.partner_id, "n": PER_MERCHANT,
                                           "endpoint": endpoint.id, "url": endpoint.url})
    return partner.partner_id, endpoint


def _scans(plan: Any) -> list[tuple[str, str]]:
    """(node type, relation) of every scan in a JSON plan."""
    found = []
    pending = [plan]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending += node
        elif isinstance(node, dict):
            if "Relation Name" in node:
                found.append((node["Node Type"], node["Relation Name"]))
            pending += [v for v in node.values() if isinstance(v, list | dict)]
    return found


@pytest.mark.usefixtures("truncated_after")
def test_the_portal_page_queries_use_indexes(settings):
    partner_id, endpoint = _merchant(settings, "big-shop")
    _merchant(settings, "other-shop")
    with get_database().engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
        large = set(conn.execute(text(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND reltuples >= :rows"),
            {"rows": LARGE_ROWS}).scalars())
    assert {"notifications", "events", "attempts"} <= large
    with session_scope() as session:
        first_failed = session.scalar(select(Notification.id).where(
            Notification.partner_id == partner_id, Notification.sequence == 1))
        event_id = session.scalar(select(Notification.event_id).where(
            Notification.id == first_failed))
    assert first_failed is not None and event_id is not None

    pages = {
        "endpoints": lambda s: queries.endpoints_overview(s, partner_id, utcnow()),
        "retry queue": lambda s: (queries.get_endpoint(s, partner_id, endpoint.public_id),
                                  queries.retry_queue(s, endpoint),
                                  queries.retry_queue(s, endpoint, after=1000),
                                  queries.attempts_chart(s, endpoint, utcnow())),
        "troubleshoot": lambda s: queries.notification_detail(s, partner_id, first_failed),
        "event log": lambda s: queries.event_log(s, partner_id, queries.EventFilters()),
        "event log, FAILED": lambda s: queries.event_log(
            s, partner_id, queries.EventFilters(status=NotificationStatus.FAILED)),
        "event log, by type": lambda s: queries.event_log(
            s, partner_id, queries.EventFilters(event_type="invoice.settled")),
        "event log, by reference": lambda s: queries.event_log(
            s, partner_id, queries.EventFilters(reference="REF-5000")),
        "event log, dates": lambda s: queries.event_log(s, partner_id, queries.EventFilters(
            created_from=utcnow() - timedelta(days=30),
            created_to=utcnow() - timedelta(days=29))),
        "event": lambda s: queries.get_event(s, partner_id, event_id),
        "alerts": lambda s: queries.alerts_of(s, partner_id),
    }
    engine = get_database().engine
    problems = []
    for name, run in pages.items():
        captured: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                    _context: Any, _many: bool, sink: list[tuple[str, Any]] = captured) -> None:
            sink.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            started = time.monotonic()
            with session_scope() as session:
                run(session)
            took = time.monotonic() - started
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert took < PAGE_BUDGET, f"{name}: {took:.2f} s"
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement, parameters in captured:
                if not statement.lstrip().upper().startswith("SELECT"):
                    continue
                cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
                plan = cursor.fetchone()[0]
                plan = json.loads(plan) if isinstance(plan, str) else plan
                full = [(kind, rel) for kind, rel in _scans(plan)
                        if kind == "Seq Scan" and rel in large]
                if full:
                    problems.append((name, full, statement))
        finally:
            raw.rollback()
            raw.close()
    assert problems == [], "\n\n".join(f"{n}: {f}\n{s}" for n, f, s in problems)
