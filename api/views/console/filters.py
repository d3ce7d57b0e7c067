"""What the templates format values with: times, relative times, JSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import g

from api.views.console.auth import csrf_token
from api.views.console.blueprint import bp
from deliverer.models import NotificationStatus, utcnow

STATUSES = [str(s) for s in NotificationStatus]


def _ts(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _rel(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = int((value - utcnow()).total_seconds())
    future = seconds > 0
    seconds = abs(seconds)
    if seconds < 60:
        text = f"{seconds}s"
    elif seconds < 3600:
        text = f"{seconds // 60}m {seconds % 60}s"
    elif seconds < 86400:
        text = f"{seconds // 3600}h {seconds % 3600 // 60}m"
    else:
        text = f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    return f"in {text}" if future else f"{text} ago"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@bp.context_processor
def _helpers() -> dict[str, Any]:
    return {"ts": _ts, "rel": _rel, "pretty": _pretty, "csrf_token": csrf_token,
            "csp_nonce": g.get("csp_nonce", ""), "operator": g.get("operator"),
            "statuses": STATUSES}
