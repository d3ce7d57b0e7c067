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

from deliverer.cursors import encode_cursor
from deliverer.db import get_database, session_scope
from deliverer.models import Base, Endpoint, Notification, NotificationStatus, utcnow
from deliverer.notifications import queries as api_queries
from deliverer.operations import inspect
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


def _nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of a JSON plan."""
    found = []
    pending = [plan]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending += node
        elif isinstance(node, dict):
            found.append(node)
            pending += [v for v in node.values() if isinstance(v, list | dict)]
    return found


def _scans(plan: Any) -> list[tuple[str, str]]:
    """(node type, relation) of every scan in a JSON plan."""
    return [(node["Node Type"], node["Relation Name"]) for node in _nodes(plan)
            if "Relation Name" in node]


def _plans(run: Any, explain: str) -> tuple[float, list[tuple[str, Any]]]:
    """Run ``run(session)``, capturing its statements; then each SELECT's plan
    (``EXPLAIN (<explain>, FORMAT JSON)``) with its statement, and how long the run took."""
    engine = get_database().engine
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                _context: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        started = time.monotonic()
        with session_scope() as session:
            run(session)
        took = time.monotonic() - started
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in captured:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute(f"EXPLAIN ({explain}FORMAT JSON) " + statement, parameters)
            plan = cursor.fetchone()[0]
            plans.append((statement, json.loads(plan) if isinstance(plan, str) else plan))
    finally:
        raw.rollback()
        raw.close()
    return took, plans


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
    problems = []
    for name, run in pages.items():
        took, plans = _plans(run, "")
        assert took < PAGE_BUDGET, f"{name}: {took:.2f} s"
        for statement, plan in plans:
            full = [(kind, rel) for kind, rel in _scans(plan)
                    if kind == "Seq Scan" and rel in large]
            if full:
                problems.append((name, full, statement))
    assert problems == [], "\n\n".join(f"{n}: {f}\n{s}" for n, f, s in problems)


def _removed_by_filter(plan: Any) -> int:
    """Rows every node of an EXPLAIN ANALYZE plan read and dropped."""
    return sum(int(node.get("Rows Removed by Filter", 0)) * int(node.get("Actual Loops", 1) or 1)
               for node in _nodes(plan))


@pytest.mark.usefixtures("truncated_after")
def test_deep_pages_filters_and_the_console_read_only_what_they_show(settings):
    """The scale try (840,000 notifications for one merchant, 5 M attempts): a cursor
    written as an OR read every newer row (a page 80 days back, 425 ms), a reference or
    type filter scanned every partner's events, and the console read attempts per
    endpoint (28-50 s). Each query here drops at most a page's worth of rows."""
    partner_id, _ = _merchant(settings, "big-shop")
    _merchant(settings, "other-shop")
    with get_database().engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    with session_scope() as session:
        deep = session.execute(select(Notification.created_at, Notification.id).where(
            Notification.partner_id == partner_id, Notification.sequence == 90_000)).one()
        deep_event = session.execute(
            select(Notification.created_at, Notification.event_id).where(
                Notification.partner_id == partner_id,
                Notification.sequence == 90_000)).one()
    cursor = encode_cursor(deep.created_at, deep.id)
    event_cursor = encode_cursor(deep_event.created_at, deep_event.event_id)
    listed = {
        "API list, a page 90,000 back": lambda s: api_queries.list_notifications(
            s, partner_id, api_queries.ListFilters(cursor=cursor)),
        "API list, by reference": lambda s: api_queries.list_notifications(
            s, partner_id, api_queries.ListFilters(reference="REF-5000")),
        "API list, by type, deep": lambda s: api_queries.list_notifications(
            s, partner_id, api_queries.ListFilters(event_type="invoice.settled",
                                                   cursor=cursor)),
        "portal event log, a page 90,000 back": lambda s: queries.event_log(
            s, partner_id, queries.EventFilters(cursor=event_cursor)),
        "console, failing endpoints": lambda s: inspect.failing_endpoints(s),
    }
    problems = []
    for name, run in listed.items():
        for statement, plan in _plans(run, "ANALYZE, ")[1]:
            dropped = _removed_by_filter(plan)
            full = [scan for scan in _scans(plan) if scan[0] == "Seq Scan"
                    and scan[1] in ("notifications", "events", "attempts")]
            if dropped > 2_000 or full:
                problems.append((name, dropped, full, statement))
    assert problems == [], "\n\n".join(f"{n}: {d} dropped, {f}\n{s}"
                                       for n, d, f, s in problems)
