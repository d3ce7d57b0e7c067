"""What the templates format values with: times, relative times, JSON."""

from __future__ import annotations

from typing import Any

from flask import g

from api.html import pretty, rel, ts
from api.views.console.auth import csrf_token
from api.views.console.blueprint import bp
from deliverer.models import NotificationStatus

STATUSES = [str(s) for s in NotificationStatus]


@bp.context_processor
def _helpers() -> dict[str, Any]:
    return {"ts": ts, "rel": rel, "pretty": pretty, "csrf_token": csrf_token,
            "csp_nonce": g.get("csp_nonce", ""), "operator": g.get("operator"),
            "statuses": STATUSES}
