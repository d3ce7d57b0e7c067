"""A lease: a row taken by one worker until a time, so that no other takes it meanwhile.

The row holds that time (its "until" column). The lease is free when the column is NULL
or the time has passed: a worker that died leaves its lease to run out, and the row to
be taken again. It is taken by a conditional UPDATE (``take``), which on SQLite, without
row locks, is the compare-and-set that lets exactly one of two racing workers have it,
and given back (``give_back``) only by its holder.

Delivery (``delivery/claim.py``, one row or a batch), resends
(``notifications/resend.py``) and alert e-mails (``alerts/service.py``) lease their rows
this way; delivery builds its claim statement once around ``is_free``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.orm import InstrumentedAttribute, Session


def is_free(until: Any, now: Any) -> ColumnElement[bool]:
    """SQL: nobody holds the lease ``until`` describes, at ``now`` (a value or a bind)."""
    return or_(until.is_(None), until <= now)


def ran_out(until: datetime | None, now: datetime) -> bool:
    """``is_free``, of a value already read."""
    return until is None or until <= now


def take(session: Session, until: InstrumentedAttribute[Any], until_value: datetime,
         now: datetime, *where: ColumnElement[bool], **values: Any) -> int:
    """Lease the rows matching ``where`` that are free at ``now``, until ``until_value``
    (setting ``values`` too); returns how many. Commits nothing: the lease holds once
    the caller commits."""
    result = session.execute(
        update(until.class_).where(*where, is_free(until, now))
        .values({until.key: until_value, **values})
        .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def give_back(session: Session, until: InstrumentedAttribute[Any], held_until: datetime,
              *where: ColumnElement[bool], **values: Any) -> int:
    """Free the rows matching ``where`` that are still leased until ``held_until``: ours
    only (had ours run out and another worker taken the row since, freeing its lease would
    let a third take it at the same time). Commits nothing."""
    result = session.execute(
        update(until.class_).where(*where, until == held_until)
        .values({until.key: None, **values})
        .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]
