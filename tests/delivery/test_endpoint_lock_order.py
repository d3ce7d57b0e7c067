"""Every transaction that locks several endpoint rows locks them in id order.

Record transactions lock their endpoints in id order (``success.lock_endpoints``). A
publish's UPDATE of a partner's endpoints (sequence numbers, wake-up marks) locked them
in the order its plan met them: after other updates moved rows in the heap and the
(partner_id, registered) index, not id order. A record of failures holding one endpoint
and a publish holding another then waited for each other until PostgreSQL aborted one
(a black-box try: publishes answered 503 with workers running).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import select, text, update

import deliverer
from deliverer.db import get_database, session_scope
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.recording.success import lock_endpoints
from deliverer.delivery.sending.sender import SendResult
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.delivery.wakeups import wake
from deliverer.models import Endpoint, Trigger, utcnow
from deliverer.partners import endpoints, registered
from deliverer.publishing.service import record_events
from tests.support.backend import ON_POSTGRES
from tests.support.helpers import new_partner
from tests.support.waiting import PUBLISH_STATEMENT, lock_wait_of, wait_until

pytestmark = pytest.mark.skipif(not ON_POSTGRES, reason="SQLite has no row locks")

FAILED = SendResult(started_at=utcnow(), duration_ms=5, success=False, status_code=500,
                    body="", error=error_payload(FailureKind.TIMEOUT, "timed out"))


def _failure_of(endpoint_id: int) -> tuple[DeliveryJob, SendResult]:
    job = DeliveryJob(notification_id="n", lease_token="t", url="", body=b"", secrets=[],
                      trigger=Trigger.AUTOMATIC, endpoint_id=endpoint_id,
                      endpoint_failing=False)
    return job, FAILED


def _scrambled(settings) -> tuple[str, list[int]]:  # type: ignore[no-untyped-def]
    """A partner with five registered endpoints that scans meet out of id order: their
    URLs (the unique index) sort in the reverse order, and the lowest ids' rows were
    moved (an indexed column updated, as publishes and claims do all the time), to the
    heap's end when the table has no free space before it. Which path a plan takes, and
    where the heap had room, depend on the tables' history: in a fresh database each
    test fails without its fix; in a long session's the order may happen to be right."""
    partner_id, ids = _partner_of_endpoints(settings)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id.in_(ids[:2]))
                        .values(wake_sent_at=utcnow()))
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id.in_(ids[:2]))
                        .values(wake_sent_at=None))
    return partner_id, ids


def _partner_of_endpoints(settings, callback_url: str | None = None  # type: ignore[no-untyped-def]
                          ) -> tuple[str, list[int]]:
    """A partner, the row of ``callback_url`` (published to first), and four registered
    endpoints whose URLs sort against their ids; the ids of its rows, in order."""
    shop = new_partner(settings, "http://127.0.0.1:9/default")
    if callback_url:
        deliverer.publish_event(shop.partner_id, "transaction.paid", "first", {},
                                callback_url=callback_url)
    with session_scope() as session:
        for path in ("d", "c", "b", "a"):
            registered.create(session, settings, shop.partner_id,
                              url=f"http://127.0.0.1:9/{path}")
    with session_scope() as session:
        return shop.partner_id, list(session.scalars(select(Endpoint.id).where(
            Endpoint.partner_id == shop.partner_id).order_by(Endpoint.id)))


def _held_against(first: int, then: int, other: Callable[[], object],
                  *statements: str) -> None:
    """Lock endpoint ``first`` as a record of its failure does, run ``other`` in a
    thread until its statement (one of ``statements``) waits for that lock, then lock
    ``then``: granted at once when ``other`` locks in id order (it holds nothing yet), a
    deadlock otherwise (cut short by a lock timeout under PostgreSQL's deadlock_timeout)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            other()
        except BaseException as error:
            errors.append(error)

    session = get_database().sessionmaker()
    thread = threading.Thread(target=run)
    try:
        lock_endpoints(session, [_failure_of(first)])
        thread.start()
        with get_database().engine.connect() as look:
            wait_until(lambda: lock_wait_of(look, *statements), 10,
                       message="the other transaction waits")
        session.execute(text("SET LOCAL lock_timeout = '300ms'"))
        lock_endpoints(session, [_failure_of(then)])
        session.commit()
    finally:
        session.rollback()
        session.close()
        thread.join(timeout=30)
    assert not thread.is_alive() and not errors, errors


def test_a_single_publish_locks_its_endpoints_in_id_order(settings):
    partner_id, ids = _scrambled(settings)
    published: list[object] = []
    _held_against(ids[1], ids[-1], lambda: published.append(deliverer.publish_event(
        partner_id, "transaction.paid", "r1", {"n": 1})), *PUBLISH_STATEMENT)
    assert len(published[0].deliveries) == 5  # type: ignore[attr-defined]


def test_a_reservation_on_several_endpoints_locks_them_in_id_order(settings):
    _partner_id, ids = _scrambled(settings)

    def reserve() -> None:
        with session_scope() as session:
            endpoints.reserve_for_endpoints(session, dict.fromkeys(ids, 1), utcnow())

    _held_against(ids[1], ids[-1], reserve, "SET last_sequence")


def test_a_claim_of_several_endpoints_clears_their_marks_in_id_order(settings):
    _partner_id, ids = _scrambled(settings)

    def clear() -> None:
        with session_scope() as session:
            session.execute(wake.CLEAR_MARKS, {"ids": ids})

    _held_against(ids[1], ids[-1], clear, "SET wake_sent_at")


def test_publishes_of_one_partner_wait_for_each_other_before_locking_a_row(settings):
    """A publish waits for the partner's publish in progress before it locks any
    endpoint (``endpoints.publish_lock``): waiting at a row, it re-checked the rows'
    newer versions mid-statement and deadlocked with other waiters."""
    partner_id, _ids = _scrambled(settings)
    session = get_database().sessionmaker()
    published: list[object] = []
    thread = threading.Thread(target=lambda: published.append(deliverer.publish_event(
        partner_id, "transaction.paid", "second", {"n": 2})))
    try:
        record_events(session, settings, partner_id=partner_id, events=[{
            "type": "transaction.paid", "reference": "first", "payload": {"n": 1}}])
        thread.start()
        with get_database().engine.connect() as look:
            assert wait_until(lambda: lock_wait_of(look, *PUBLISH_STATEMENT), 10,
                              message="the second publish waits") == "advisory"
        session.commit()
    finally:
        session.close()
        thread.join(timeout=30)
    assert published and len(published[0].deliveries) == 5  # type: ignore[attr-defined]


def test_a_bulk_publish_to_urls_and_endpoints_locks_them_in_id_order(settings):
    """A callback URL's row older than the registered endpoints: the reservations take
    the endpoints by id, then the URLs' rows by URL (``endpoints.lock_for_publish``)."""
    callback = "http://127.0.0.1:9/callback"
    partner_id, ids = _partner_of_endpoints(settings, callback)
    with session_scope() as session:
        by_url = session.scalar(select(Endpoint.id).where(Endpoint.url == callback))
    assert by_url == ids[1]

    def publish() -> None:
        with session_scope() as session:
            record_events(session, settings, partner_id=partner_id, events=[
                {"type": "transaction.paid", "reference": "fan-out", "payload": {}},
                {"type": "transaction.paid", "reference": "cb", "payload": {},
                 "callback_url": callback}])

    _held_against(by_url, ids[-1], publish, "INSERT INTO endpoints", "FOR NO KEY UPDATE")
