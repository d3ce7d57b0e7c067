"""A partner's endpoints: one row per webhook URL, created on first use, and the
sequence numbers of the notifications sent to it (the order the per-endpoint queue
keeps, ``deliverer.delivery.endpoint_queue``)."""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Insert,
    Update,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from deliverer.models import Endpoint, locked_in_id_order, table_of
from deliverer.models.base import constant
from deliverer.models.endpoint import OWN_CONFIGURATION, ids_locked_in_order, subscribed_in_sql

_ENDPOINTS = table_of(Endpoint)
_E = _ENDPOINTS.c
# Why a notification to a disabled endpoint is NOT_SENT, when no reason was recorded.
DISABLED = "Endpoint disabled"
# The class (first key) of the advisory locks that order a partner's publishes.
PUBLISH_LOCKS = 7301

# The wake-up mark (``delivery/wakeups/wake.py``), set in the statement that reserves sequence
# numbers, so that it costs a publish no round trip: marked now, when ``s_wake`` asks for
# it, the endpoint is enabled and no wake-up sent since ``s_stale`` is pending. The
# statement returns the mark; a publish that finds it equal to its own ``s_now`` set it,
# and sends the wake-up.
_WAKE_ASKED = bindparam("s_wake", type_=Boolean())
_NOW = bindparam("s_now", type_=_E.wake_sent_at.type)
# A deleted endpoint's row that a publish by URL takes back (``_by_url_again``): what the
# statement decides from the row's old values, it decides as for a live, healthy one.
_REVIVED = _E.deleted_at.is_not(None)
_NEWLY = and_(_WAKE_ASKED, or_(_E.disabled_at.is_(None), _REVIVED),
              or_(_E.wake_sent_at.is_(None), _E.wake_sent_at < bindparam("s_stale")))
_WAKE = case((_NEWLY, _NOW), else_=_E.wake_sent_at)
# A row created by a publish: marked now when ``s_wake`` asks for it.
_WAKE_NEW = case((_WAKE_ASKED, _NOW), else_=None)


def _by_url_again() -> dict[str, Any]:
    """A publish by URL (a callback URL, the webhook URL without its default row) that
    finds the row of a deleted endpoint takes it back as a new by-URL endpoint: its
    sequence numbers go on, and nothing of the endpoint it was carries over (its secret,
    limit, disabling, failures), as ``default_endpoint.make_default`` does when the webhook
    URL takes a row. It was NOT_SENT "The endpoint was deleted", silently."""
    def reset(column: Any, fresh: Any = None) -> Any:
        return case((_REVIVED, fresh), else_=column)

    return {"deleted_at": None, "consecutive_failures": reset(_E.consecutive_failures, 0),
            **{name: reset(_E[name]) for name in (
                *OWN_CONFIGURATION, "disabled_at", "disabled_reason", "failing_since",
                "alerted_at", "retry_after_until", "last_error")}}


def _by_group(value: ColumnElement[bool]) -> ColumnElement[bool]:
    """Whose wake-up a newly set mark stands for (``wake_by_group``): its group's when
    ``value`` holds, otherwise the endpoint's own; a mark already set keeps its own."""
    return case((_NEWLY, value), else_=_E.wake_by_group)


@functools.cache
def _upsert(dialect: str) -> Any:
    """One statement creates the endpoint row on first use and moves its counter on."""
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert_(_ENDPOINTS)
        .values(partner_id=bindparam("s_partner_id"), url=bindparam("s_url"),
                last_sequence=bindparam("s_count"), created_at=_NOW,
                consecutive_failures=0, wake_sent_at=_WAKE_NEW, wake_by_group=False)
        .on_conflict_do_update(
            index_elements=["partner_id", "url"],
            set_={"last_sequence": _E.last_sequence + bindparam("s_count"),
                  "wake_sent_at": _WAKE, "wake_by_group": _by_group(false()),
                  **_by_url_again()})
        .returning(_E.id, _E.last_sequence, _E.disabled_at, _E.disabled_reason,
                   _E.wake_sent_at, _E.public_id)
    )


def reserve_sequences(session: Session, partner_id: str, url: str, now: datetime,
                      count: int = 1, wake_stale: datetime | None = None
                      ) -> tuple[int, int, str | None, bool, str]:
    """(endpoint id, first of ``count`` consecutive sequence numbers, the reason the
    endpoint is disabled or None, whether to send it a wake-up, its public id), creating
    the endpoint on first use.

    The increment is part of the caller's transaction: a rolled-back publish gives its
    numbers back, so numbers per endpoint have no gaps. With ``wake_stale``, the endpoint
    is marked as having a wake-up pending unless one sent after that time is (``_WAKE``).
    """
    row = session.connection().execute(_upsert(session.get_bind().dialect.name), {
        "s_partner_id": partner_id, "s_url": url, "s_count": count, "s_now": now,
        "s_wake": wake_stale is not None, "s_stale": wake_stale or now,
    }).one()
    disabled = (row[3] or DISABLED) if row[2] is not None else None
    return (int(row[0]), int(row[1]) - count + 1, disabled, woke(row[4], now, wake_stale),
            row[5])


def woke(mark: datetime | None, now: datetime, wake_stale: datetime | None) -> bool:
    """Whether the publish at ``now`` set the mark ``mark``: it sends the wake-up."""
    return wake_stale is not None and mark is not None and mark == now


def next_sequence(session: Session, partner_id: str, url: str, now: datetime) -> tuple[int, int]:
    """(endpoint id, sequence number) for one new notification to ``url``."""
    endpoint_id, sequence, *_ = reserve_sequences(session, partner_id, url, now)
    return endpoint_id, sequence


_BUMP = (
    update(_ENDPOINTS)
    .where(locked_in_id_order(_E.id.in_(bindparam("s_ids", expanding=True))))
    .values(last_sequence=_E.last_sequence + bindparam("s_count"), wake_sent_at=_WAKE,
            wake_by_group=_by_group(false()))
    .returning(_E.id, _E.last_sequence, _E.wake_sent_at)
)


_LOCK_FOR_PUBLISH = ids_locked_in_order(or_(
    _E.id.in_(bindparam("l_ids", expanding=True)),
    and_(_E.partner_id == bindparam("l_partner_id"),
         _E.url.in_(bindparam("l_urls", expanding=True)))))


def lock_for_publish(session: Session, partner_id: str, endpoint_ids: Collection[int],
                     urls: Collection[str]) -> None:
    """Lock the existing rows a publish reserves numbers on, registered endpoints and
    URLs' rows together, in id order (PostgreSQL), before its reservations: they take
    the endpoints by id, then the URLs' rows by URL, and a record of failures holding
    one of them while it waited for another deadlocked with it. Only needed when a
    publish goes to URLs and to more than one row."""
    if (session.get_bind().dialect.name == "postgresql" and urls
            and len(endpoint_ids) + len(urls) > 1):
        session.execute(_LOCK_FOR_PUBLISH, {"l_ids": sorted(endpoint_ids),
                                            "l_partner_id": partner_id,
                                            "l_urls": sorted(urls)})


def reserve_for_endpoints(session: Session, counts: dict[int, int], now: datetime,
                          wake_stale: datetime | None = None
                          ) -> tuple[dict[int, int], set[int]]:
    """The first of ``counts[id]`` consecutive sequence numbers for each registered
    endpoint id, in the caller's transaction (gap-free, as ``reserve_sequences``), and
    the endpoints to send a wake-up (with ``wake_stale``: as ``reserve_sequences``).

    When every endpoint takes the same count (a single publish, however many endpoints
    it fans out to) one statement does it; otherwise (a bulk publish) one statement per
    endpoint, in id order, so that two bulk publishes lock shared endpoints in the same
    order and one waits for the other instead of both deadlocking."""
    first: dict[int, int] = {}
    woken: set[int] = set()
    steps: list[tuple[int, list[int]]]
    if len(set(counts.values())) <= 1:
        steps = [(count, sorted(counts)) for count in set(counts.values())]
    else:
        steps = [(counts[endpoint_id], [endpoint_id]) for endpoint_id in sorted(counts)]
    connection = session.connection()
    for count, ids in steps:
        for endpoint_id, last, mark in connection.execute(_BUMP, {
                "s_ids": ids, "s_count": count, "s_now": now,
                "s_wake": wake_stale is not None, "s_stale": wake_stale or now}):
            first[int(endpoint_id)] = int(last) - count + 1
            if woke(mark, now, wake_stale):
                woken.add(int(endpoint_id))
    return first, woken


# What a publish decided in one statement (PostgreSQL, ``publishing/one_statement.py``)
# needs of each endpoint it reserved a number on: the same columns from either statement.
_TARGET = (_E.id, _E.url, _E.is_default, _E.last_sequence, _E.disabled_at,
           _E.disabled_reason, _E.wake_sent_at, _E.failing_since)


def publish_lock(partner_id: ColumnElement[str]) -> ColumnElement[Any]:
    """A column of a publish's first read (PostgreSQL): the partner's publishes run one
    at a time, each waiting for the one before it to commit, before it locks any row.

    They would wait anyway, for the endpoint rows they all update; but publishes that
    waited at those rows, locking their newer versions through the old ones (PostgreSQL
    re-checks an updated row), queued behind each other's waits and deadlocked. An
    advisory lock: held until the commit, on a number of the partner's id in a class of
    deliverer's own."""
    return func.pg_advisory_xact_lock(constant(PUBLISH_LOCKS),
                                      func.hashtext(partner_id)).label("publish_lock")


def hold_publishes(session: Session, partner_id: str) -> None:
    """Wait for the partner's publish in progress, and make its next ones wait until
    this transaction ends (PostgreSQL; SQLite's writers take turns anyway), as a
    statement of its own: the next one reads what that publish committed. Taken by the
    publishes that run several statements (``record_events``), and by changes of the
    partner's endpoints, which check a URL and then write its row (a publish by URL in
    between created that row first: IntegrityError, a 500)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(publish_lock(literal(partner_id))))


def reserve_subscribed(partner_id: ColumnElement[str], event_type: ColumnElement[str],
                       when: ColumnElement[bool]) -> Update:
    """One sequence number on each of the partner's registered endpoints subscribed to
    ``event_type``, with the wake-up mark as ``reserve_sequences`` sets it (``s_now``,
    ``s_wake``, ``s_stale``), when ``when`` holds: a statement to run as a CTE. An
    endpoint changed meanwhile is checked again by PostgreSQL against its latest version.
    Returns ``public_id`` and ``_TARGET``."""
    return (
        update(_ENDPOINTS)
        .where(locked_in_id_order(_E.partner_id == partner_id, _E.registered.is_(True),
                                  subscribed_in_sql(_E.event_types, event_type), when))
        .values(last_sequence=_E.last_sequence + constant(1), wake_sent_at=_WAKE,
                wake_by_group=_by_group(_E.failing_since.is_(None)))
        .returning(_E.public_id, *_TARGET)
    )


def reserve_url(partner_id: ColumnElement[str], url: ColumnElement[str],
                public_id: ColumnElement[str], when: ColumnElement[bool]) -> Insert:
    """``reserve_sequences`` of one number as a statement to run as a CTE, when ``when``
    holds: the endpoint row of ``url`` (created with ``public_id`` on first use). Returns
    its ``public_id`` (a callback URL's notifications reconcile by it) and ``_TARGET``."""
    return (
        pg_insert(_ENDPOINTS)
        .from_select(
            ["public_id", "partner_id", "url", "last_sequence", "created_at",
             "consecutive_failures", "registered", "is_default", "draining", "wake_sent_at",
             "wake_by_group"],
            select(public_id, partner_id, url, constant(1), _NOW, constant(0), constant(False),
                   constant(False), constant(False), _WAKE_NEW, _WAKE_ASKED).where(when),
            include_defaults=False)
        .on_conflict_do_update(
            index_elements=["partner_id", "url"],
            set_={"last_sequence": _E.last_sequence + constant(1), "wake_sent_at": _WAKE,
                  "wake_by_group": _by_group(or_(_E.failing_since.is_(None), _REVIVED)),
                  **_by_url_again()})
        .returning(_E.public_id, *_TARGET)
    )
