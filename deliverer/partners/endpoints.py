"""A partner's endpoints: one row per webhook URL, created on first use, and the
sequence numbers of the notifications sent to it (the order the per-endpoint queue
keeps, ``deliverer.delivery.endpoint_queue``)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from deliverer.models import Endpoint, table_of

_ENDPOINTS = table_of(Endpoint)


@functools.cache
def _upsert(dialect: str) -> Any:
    """One statement creates the endpoint row on first use and moves its counter on."""
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert_(_ENDPOINTS)
        .values(partner_id=bindparam("s_partner_id"), url=bindparam("s_url"),
                last_sequence=bindparam("s_count"), created_at=bindparam("s_now"),
                consecutive_failures=0)
        .on_conflict_do_update(
            index_elements=["partner_id", "url"],
            set_={"last_sequence": _ENDPOINTS.c.last_sequence + bindparam("s_count")})
        .returning(_ENDPOINTS.c.id, _ENDPOINTS.c.last_sequence, _ENDPOINTS.c.disabled_at,
                   _ENDPOINTS.c.disabled_reason)
    )


def reserve_sequences(session: Session, partner_id: str, url: str, now: datetime,
                      count: int = 1) -> tuple[int, int, str | None]:
    """(endpoint id, first of ``count`` consecutive sequence numbers, the reason the
    endpoint is disabled or None), creating the endpoint on first use.

    The increment is part of the caller's transaction: a rolled-back publish gives its
    numbers back, so numbers per endpoint have no gaps.
    """
    row = session.connection().execute(_upsert(session.get_bind().dialect.name), {
        "s_partner_id": partner_id, "s_url": url, "s_count": count, "s_now": now,
    }).one()
    disabled = (row[3] or "Endpoint disabled") if row[2] is not None else None
    return int(row[0]), int(row[1]) - count + 1, disabled


def next_sequence(session: Session, partner_id: str, url: str, now: datetime) -> tuple[int, int]:
    """(endpoint id, sequence number) for one new notification to ``url``."""
    endpoint_id, sequence, _disabled = reserve_sequences(session, partner_id, url, now)
    return endpoint_id, sequence


_BUMP = (
    update(_ENDPOINTS)
    .where(_ENDPOINTS.c.id.in_(bindparam("s_ids", expanding=True)))
    .values(last_sequence=_ENDPOINTS.c.last_sequence + bindparam("s_count"))
    .returning(_ENDPOINTS.c.id, _ENDPOINTS.c.last_sequence)
)


def reserve_for_endpoints(session: Session, counts: dict[int, int]) -> dict[int, int]:
    """The first of ``counts[id]`` consecutive sequence numbers for each registered
    endpoint id, in the caller's transaction (gap-free, as ``reserve_sequences``). One
    statement per distinct count: one in all for a single publish, however many
    endpoints it fans out to."""
    first: dict[int, int] = {}
    by_count: dict[int, list[int]] = {}
    for endpoint_id, count in counts.items():
        by_count.setdefault(count, []).append(endpoint_id)
    connection = session.connection()
    for count, ids in sorted(by_count.items()):
        for endpoint_id, last in connection.execute(_BUMP, {"s_ids": sorted(ids),
                                                            "s_count": count}):
            first[int(endpoint_id)] = int(last) - count + 1
    return first
