"""When a failed notification is tried again: the configured ladder (``retry_ladder``),
time-scaled, and the receiver's Retry-After, never past the cycle's 30 days."""

from __future__ import annotations

from datetime import datetime, timedelta

from deliverer.config import Settings


def cycle_deadline(settings: Settings, cycle_started_at: datetime) -> datetime:
    """No attempt of a cycle is scheduled past this."""
    return cycle_started_at + _max_age(settings)


def oldest_live_cycle(settings: Settings, at: datetime) -> datetime:
    """A cycle that started before this has no attempt left at ``at``."""
    return at - _max_age(settings)


def _max_age(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.ladder.max_age * settings.time_scale)


def next_attempt_at(settings: Settings, *, cycle_started_at: datetime, failed_at: datetime,
                    failures: int, retry_after: float | None = None) -> datetime | None:
    """When to try again after the ``failures``-th failure of a cycle, or None when the
    cycle is exhausted. A receiver that asked for more time than the ladder gives
    (``Retry-After``, in seconds) gets it, within the cycle."""
    due = settings.ladder.next_attempt_at(cycle_started_at=cycle_started_at,
                                          failed_at=failed_at, failures=failures,
                                          time_scale=settings.time_scale)
    if due is not None and retry_after:
        asked = failed_at + timedelta(seconds=retry_after * settings.time_scale)
        due = min(max(due, asked), cycle_deadline(settings, cycle_started_at))
    return due
