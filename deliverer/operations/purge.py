"""Retention: delete attempts older than a retention period, so the table stops growing.

Deletes in batches, each in its own short transaction (no long lock on a big table, no
huge WAL burst), for a bounded number of batches per run; the daily beat task catches up
on whatever one run left. Notifications keep their latest error payload, so a purged
history never leaves a failing notification without its error and hint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from deliverer.db import session_scope
from deliverer.models import Attempt, utcnow

log = logging.getLogger(__name__)

DEFAULT_BATCH = 5000
DEFAULT_MAX_BATCHES = 2000  # 10 million rows per run at the default batch size


def purge_attempts(older_than: timedelta, *, now: datetime | None = None,
                   batch_size: int = DEFAULT_BATCH, max_batches: int = DEFAULT_MAX_BATCHES,
                   progress: Callable[[int], object] | None = None,
                   stop: Callable[[], bool] = lambda: False) -> int:
    """Delete attempts that started before ``now - older_than``; returns how many.
    ``stop`` is asked before each batch: the rest is left to the next run."""
    if older_than < timedelta(0):
        raise ValueError("the retention period cannot be negative")
    if batch_size < 1 or max_batches < 1:
        raise ValueError("batch_size and max_batches must be at least 1")
    cutoff = (now or utcnow()) - older_than
    total = 0
    for _ in range(max_batches):
        if stop():
            log.info("purge stopped early, as asked; the next run continues")
            break
        with session_scope() as session:
            ids = list(session.scalars(
                select(Attempt.id).where(Attempt.started_at < cutoff)
                .order_by(Attempt.id).limit(batch_size)
            ))
            if ids:
                session.execute(delete(Attempt).where(Attempt.id.in_(ids))
                                .execution_options(synchronize_session=False))
        total += len(ids)
        if progress is not None and ids:
            progress(len(ids))
        if len(ids) < batch_size:
            break
    else:
        log.warning("purge stopped after %d batches; the next run continues", max_batches)
    if total:
        log.info("purged %d attempt(s) that started before %s", total, cutoff.isoformat())
    return total


def count_purgeable(older_than: timedelta, now: datetime | None = None) -> int:
    from sqlalchemy import func

    cutoff = (now or utcnow()) - older_than
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Attempt)
                                  .where(Attempt.started_at < cutoff)) or 0)
