"""The endpoints page's 24-hour chart: attempts per hour and their success rate, drawn as
SVG by the page itself (no script: the pages' Content-Security-Policy allows none)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

HOURS = 24
# The drawing's size in SVG units (the page scales it).
WIDTH = 480
HEIGHT = 80


def hourly_buckets(now: datetime) -> list[datetime]:
    """The starts of the last 24 hours, the current (partial) hour last."""
    current = now.replace(minute=0, second=0, microsecond=0)
    return [current - timedelta(hours=HOURS - 1 - i) for i in range(HOURS)]


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_height: float
    failed_y: float
    failed_height: float
    label: str  # the bar's tooltip (<title>): hour, attempts, success rate


@dataclass(frozen=True)
class Chart:
    starts: list[datetime]
    attempts: list[int]
    successes: list[int]

    @property
    def total(self) -> int:
        return sum(self.attempts)

    @property
    def success_rate(self) -> float | None:
        return sum(self.successes) / self.total if self.total else None

    def bars(self) -> list[Bar]:
        """Per hour: delivered (bottom) and failed (on top), scaled to the busiest hour."""
        peak = max(self.attempts, default=0) or 1
        step = WIDTH / HOURS
        bars = []
        for i, (start, tried, ok) in enumerate(zip(self.starts, self.attempts,
                                                   self.successes, strict=True)):
            ok_height = HEIGHT * ok / peak
            failed_height = HEIGHT * (tried - ok) / peak
            rate = f", {100 * ok / tried:.0f}% delivered" if tried else ""
            bars.append(Bar(
                x=round(i * step + 1, 1), width=round(step - 2, 1),
                ok_y=round(HEIGHT - ok_height, 1), ok_height=round(ok_height, 1),
                failed_y=round(HEIGHT - ok_height - failed_height, 1),
                failed_height=round(failed_height, 1),
                label=f"{start:%H}:00 UTC: {tried} attempt{'s' if tried != 1 else ''}{rate}"))
        return bars

    def rate_points(self) -> str:
        """The success-rate line (0% at the bottom, 100% at the top), over the hours
        that had attempts: an SVG polyline's points."""
        step = WIDTH / HOURS
        return " ".join(
            f"{i * step + step / 2:.1f},{HEIGHT - HEIGHT * ok / tried:.1f}"
            for i, (tried, ok) in enumerate(zip(self.attempts, self.successes, strict=True))
            if tried)
