"""What an attempt came to, for the task that ran it: whether and when to come back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from deliverer.delivery.claim import ClaimState
from deliverer.models import Lane


@dataclass(frozen=True)
class NextAttempt:
    notification_id: str
    lane: Lane
    due_at: datetime


@dataclass(frozen=True)
class AttemptOutcome:
    state: ClaimState
    status: str | None = None
    # Set when the next attempt is due within the sweep horizon: the caller enqueues it
    # (after the commit that recorded it). Later ones are left to the beat sweep.
    next_attempt: NextAttempt | None = None
    due_at: datetime | None = None
