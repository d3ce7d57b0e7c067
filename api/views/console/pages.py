"""The console's pages: failing endpoints, every partner's endpoints, notifications
(search, one, Retry, Ignore) and recent events."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, request, url_for

from api.db import commit_then, get_session, roll_back_refused
from api.views.console.blueprint import bp, deliverer_settings, page
from api.views.console.filters import STATUSES
from deliverer.errors import DelivererError
from deliverer.models import NotificationStatus, utcnow
from deliverer.notifications.outcome import wait_for_attempt
from deliverer.operations import activity, inspect
from deliverer.operations.operator_actions import operator_ignore, operator_retry

# How long a Retry waits for the attempt's outcome before answering "queued" (seed 003:
# "if your endpoint successfully receives the webhook, you get a success message").
RETRY_WAIT_CAP = 5.0


@bp.get("/")
def index() -> Any:
    db = get_session()
    return page("console/endpoints.html", endpoints=inspect.failing_endpoints(db),
                alerts=activity.recent_alerts(db), now=utcnow())


@bp.get("/endpoints")
def endpoints() -> Any:
    partner = request.args.get("partner") or ""
    failing_only = request.args.get("failing") == "1"
    rows = inspect.partner_endpoints(get_session(), partner=partner,
                                     failing_only=failing_only)
    return page("console/partner_endpoints.html", rows=rows, partner=partner,
                failing_only=failing_only)


def _endpoint_id(raw: str, problems: list[str]) -> int | None:
    """An endpoint filter: its public id (``ep_...``, as alerts and e-mails name it) or
    its number. Anything else is not applied, and said in ``problems``; a number past
    64 bits overflowed in the database driver (a 500)."""
    if not raw:
        return None
    if raw.startswith("ep_"):
        found = inspect.endpoint_number(get_session(), raw)
        if found is None:
            problems.append(f"no endpoint {raw}")
        return found
    if raw.isascii() and raw.isdigit() and 0 < int(raw) < 2**63:
        return int(raw)
    problems.append(f"“{raw}” is not an endpoint id")
    return None


@bp.get("/notifications")
def notifications() -> Any:
    """The search. A filter that is not one (a status not listed, an endpoint that is
    not one) is not applied, and the page says so with a 400: a mistyped filter
    answered everyone's notifications as if they were the filtered result."""
    args = request.args
    problems: list[str] = []
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        problems.append(f"“{status}” is not a delivery status")
        status = None
    endpoint_id = _endpoint_id(args.get("endpoint_id", ""), problems)
    searched = any(args.get(k) for k in ("q", "partner", "reference", "status", "endpoint_id"))
    limit = max(1, min(args.get("limit", default=100, type=int) or 100, inspect.MAX_ROWS))
    results = inspect.search_notifications(
        get_session(), q=args.get("q"), partner=args.get("partner"),
        reference=args.get("reference"), status=status, endpoint_id=endpoint_id,
        limit=limit)
    return page("console/notifications.html", 400 if problems else 200, results=results,
                searched=searched, args=args, selected_status=status,
                endpoint_id=endpoint_id, problems=problems, limit=limit)


@bp.get("/notifications/<notification_id>")
def notification(notification_id: str) -> Any:
    detail = inspect.notification_detail(get_session(), notification_id)
    if detail is None:
        return page("console/error.html", 404, title="Not found",
                    message=f"No notification {notification_id}.")
    return page("console/notification.html", d=detail, n=detail.notification)


@bp.post("/notifications/<notification_id>/retry")
def retry(notification_id: str) -> Any:
    try:
        operator_retry(get_session(), deliverer_settings(), notification_id)
    except DelivererError as exc:
        roll_back_refused(exc)
        flash(f"Retry refused: {exc.message}", "error")
        return redirect(url_for("console.notification", notification_id=notification_id))
    current_app.logger.info("operator retry of %s", notification_id,
                            extra={"notification_id": notification_id})
    wait = min(deliverer_settings().resend_wait_seconds, RETRY_WAIT_CAP)
    status, error = commit_then(lambda: wait_for_attempt(notification_id, wait))
    if status == NotificationStatus.SENT:
        flash("Retry delivered: the endpoint accepted the webhook.", "ok")
    elif status == NotificationStatus.FAILED:
        message = (error or {}).get("message") or "delivery failed"
        flash(f"Retry failed: {message}", "error")
    else:
        flash("Retry queued: the webhook will be sent in a moment. Reload to see the result.",
              "ok")
    return redirect(url_for("console.notification", notification_id=notification_id))


@bp.post("/notifications/<notification_id>/ignore")
def ignore(notification_id: str) -> Any:
    try:
        operator_ignore(get_session(), notification_id)
    except DelivererError as exc:
        roll_back_refused(exc)
        flash(f"Ignore refused: {exc.message}", "error")
    else:
        current_app.logger.info("operator ignored %s", notification_id,
                                extra={"notification_id": notification_id})
        flash("Notification ignored: it is out of the retry queue for good (NOT_SENT).", "ok")
    return redirect(url_for("console.notification", notification_id=notification_id))


@bp.get("/events")
def events() -> Any:
    db = get_session()
    partner = request.args.get("partner")
    return page("console/events.html", rows=activity.recent_events(db, partner=partner),
                actions=activity.recent_actions(db), partner=partner or "")
