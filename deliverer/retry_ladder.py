"""The retry ladder (seed 003): how long to wait after each failed attempt, and when to
give up. 2m, 5m, 10m, 15m, 30m, 1h, 2h, 4h, 8h, then every 8h, for 30 days from the start
of the delivery cycle; a manual retry starts a fresh cycle.

``DELIVERER_RETRY_LADDER`` replaces it (``config``); ``deliverer.delivery.ladder`` applies
it to a failed attempt, time-scaled, with the receiver's Retry-After. Nothing of the
project is imported here: the configuration is built from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass(frozen=True)
class Ladder:
    steps: tuple[float, ...]
    # After the last step, wait this long between attempts until max_age.
    repeat: float
    # Measured from the cycle start; no attempt is scheduled past it.
    max_age: float

    def __post_init__(self) -> None:
        if not self.steps or any(s <= 0 for s in self.steps) or self.repeat <= 0:
            raise ValueError("ladder delays must be positive")
        if self.max_age <= 0:
            raise ValueError("ladder max_age must be positive")

    @classmethod
    def parse(cls, text: str) -> Ladder:
        """``"120,300,600;repeat=28800;max_age=2592000"`` (seconds)."""
        parts = [p.strip() for p in text.split(";") if p.strip()]
        steps = tuple(float(s) for s in (parts or [""])[0].split(",") if s.strip())
        if not steps:
            raise ValueError("no delays given")
        options = dict(p.partition("=")[::2] for p in parts[1:])
        if unknown := set(options) - {"repeat", "max_age"}:
            raise ValueError(f"options are repeat= and max_age=, not {sorted(unknown)}")
        return cls(
            steps=steps,
            repeat=float(options.get("repeat", steps[-1])),
            max_age=float(options.get("max_age", 30 * DAY)),
        )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt of a cycle (1-based)."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        if failures <= len(self.steps):
            return self.steps[failures - 1]
        return self.repeat

    def next_attempt_at(
        self,
        *,
        cycle_started_at: datetime,
        failed_at: datetime,
        failures: int,
        time_scale: float = 1.0,
    ) -> datetime | None:
        """When to try again after a failure, or None when the cycle is exhausted."""
        due = failed_at + timedelta(seconds=self.delay(failures) * time_scale)
        deadline = cycle_started_at + timedelta(seconds=self.max_age * time_scale)
        if due > deadline:
            return None
        return due


DEFAULT_LADDER = Ladder(
    steps=(
        2 * MINUTE,
        5 * MINUTE,
        10 * MINUTE,
        15 * MINUTE,
        30 * MINUTE,
        1 * HOUR,
        2 * HOUR,
        4 * HOUR,
        8 * HOUR,
    ),
    repeat=8 * HOUR,
    max_age=30 * DAY,
)
