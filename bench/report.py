"""Figures, ratios, targets: what a benchmark returns, and the table printed from them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "min": min(values) if values else math.nan,
    }


@dataclass
class Row:
    """One line of the table: a figure, its same-run reference, the ratio and the target.

    ``target`` is a (comparison, bound) pair on ``ratio`` (when ``on`` is "ratio") or on
    ``value``: ``(">=", 2.0)`` means at least twice the reference.
    """

    figure: str
    value: float
    unit: str
    reference: float | None = None
    reference_label: str | None = None
    target: tuple[str, float] | None = None
    on: str = "value"  # "value" or "ratio"
    note: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference is None or not self.reference or math.isnan(self.reference):
            return None
        return self.value / self.reference

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        subject = self.ratio if self.on == "ratio" else self.value
        if subject is None or math.isnan(subject):
            return False
        op, bound = self.target
        return {"<=": subject <= bound, ">=": subject >= bound, "==": subject == bound}[op]

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op, bound = self.target
        what = "ratio" if self.on == "ratio" else self.unit
        return f"{op} {_num(bound)} {what}".replace(" x", "x")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["met"] = self.met
        data["target"] = self.target_text() or None
        return data


@dataclass
class Result:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 2),
            "checks": self.checks,
            "rows": [r.as_dict() for r in self.rows],
            "details": self.details,
        }


def _num(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip() if unit else text


def table(results: list[Result]) -> list[list[str]]:
    rows = [["#", "benchmark", "figure", "measured", "reference (same run)", "ratio",
             "target", "met"]]
    for index, result in enumerate(results, 1):
        if result.status != "ok":
            rows.append([str(index), result.name, "ERROR", (result.error or "")[:60], "", "",
                         "", "no"])
        for row in result.rows:
            ref = ""
            if row.reference is not None:
                ref = f"{_num(row.reference, row.unit)} ({row.reference_label})"
            ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
            met = {None: "", True: "yes", False: "NO"}[row.met]
            rows.append([str(index), result.name, row.figure, _num(row.value, row.unit), ref,
                         ratio, row.target_text(), met])
    return rows


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_rst(rows: list[list[str]]) -> str:
    """An RST simple-table... as a grid table, which tolerates empty cells."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "+" + "+".join("=" * (w + 2) for w in widths) + "+"
    out = [border]
    for n, row in enumerate(rows):
        out.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
                   + " |")
        out.append(head if n == 0 else border)
    return "\n".join(out)
