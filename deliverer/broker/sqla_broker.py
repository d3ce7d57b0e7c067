"""Housekeeping for kombu's SQLAlchemy transport, the embedded default's broker.

The transport hands a message to a worker by marking its row invisible, and never
deletes it: ``broker.db`` grew by a row per message for good (the beat sweep alone sends
one every few seconds, some 17,000 rows a day with no traffic). Nothing upstream prunes
it (kombu calls its SQL transports unsupported). An invisible row is never read again:
a message a worker took but did not acknowledge comes back as a new row (kombu's
``Channel._restore`` puts it again), so deleting the invisible rows loses nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Integer, column, create_engine, delete, inspect, select, table

# kombu's SQLAlchemy transport hands these to create_engine (deliverer.celery_app), and
# so does the pruning here: wait for SQLite's write lock instead of failing when web,
# worker and beat write at once.
SQLA_TRANSPORT_OPTIONS: dict[str, Any] = {"connect_args": {"timeout": 30}}

# The transport's default table; deliverer sets no ``message_tablename``.
MESSAGES = table("kombu_message", column("id", Integer), column("visible", Boolean))

# Rows per DELETE: each is a short write transaction, so SQLite's lock is never held long
# against the web, the worker and beat, which all write to the broker.
PRUNE_BATCH = 5_000


def prune_consumed(broker_url: str, batch: int = PRUNE_BATCH) -> int:
    """Delete every message the broker has handed out; returns how many."""
    # As kombu's transport makes its own engine.
    engine = create_engine(broker_url.removeprefix("sqla+"), **SQLA_TRANSPORT_OPTIONS)
    try:
        if not inspect(engine).has_table(MESSAGES.name):
            return 0  # nothing has been sent through this broker yet
        consumed = (select(MESSAGES.c.id).where(MESSAGES.c.visible.is_(False))
                    .limit(batch).scalar_subquery())
        pruned = 0
        while True:
            with engine.begin() as conn:
                deleted = conn.execute(delete(MESSAGES).where(MESSAGES.c.id.in_(consumed)))
            pruned += deleted.rowcount
            if deleted.rowcount < batch:
                return pruned
    finally:
        engine.dispose()


def declare_queues(broker_url: str, names: tuple[str, ...]) -> None:
    """Create the transport's tables and a row per queue, from one process, before the
    web, worker and beat processes start: each creates a missing queue on first use,
    and two doing it at once on a fresh data folder fail one of them with a UNIQUE
    violation on ``kombu_queue.name`` (kombu's lock is per process)."""
    from kombu import Connection

    with Connection(broker_url, transport_options=SQLA_TRANSPORT_OPTIONS) as connection:
        channel = connection.default_channel
        for name in names:
            channel._new_queue(name)
