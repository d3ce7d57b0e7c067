"""The outbox's hand-over rule, written once.

A notification's next attempt is a row (``next_attempt_at``). One due within the sweep's
horizon is handed to the broker: a message with its due time as ETA, sent after the
commit that marks the row handed over (``scheduled_for`` its due time, ``enqueued_at``
now). One due later is left to the beat sweep, the outbox reader
(``scheduling/sweep.py``), which hands it over once it comes near: no message carries an
ETA beyond the horizon (on Redis, long ETAs are redelivered after the visibility timeout
and held in worker memory). A row whose message was lost is handed over again by the
sweep: its ``scheduled_for`` is no longer its due time, or it was handed over longer
than the lost-message grace ago.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from deliverer.config import Settings


def horizon(settings: Settings, now: datetime) -> datetime:
    """Rows due up to this are handed to the broker now."""
    return now + timedelta(seconds=settings.sweep_horizon)


def hands_over(settings: Settings, due: datetime | None, now: datetime) -> bool:
    """Whether a row due at ``due`` (None: never) goes to the broker now."""
    return due is not None and due <= horizon(settings, now)


def handed_over(due: Any, now: Any) -> dict[str, Any]:
    """The marks of a row handed over at ``now`` (values, columns or binds)."""
    return {"scheduled_for": due, "enqueued_at": now}


LEFT_TO_SWEEP: dict[str, Any] = {"scheduled_for": None, "enqueued_at": None}


def marks(settings: Settings, due: datetime | None, now: datetime) -> dict[str, Any]:
    """A row due at ``due``: handed over, or left to the sweep."""
    return handed_over(due, now) if hands_over(settings, due, now) else dict(LEFT_TO_SWEEP)
