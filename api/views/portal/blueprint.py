"""The portal's blueprint, and what every part of it uses: the session, a page, flashes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, render_template

from api.db import commit_then, get_session
from deliverer.config import Settings
from deliverer.errors import DelivererError, TooManyRequests
from deliverer.models import NotificationStatus, PortalSession
from deliverer.notifications.outcome import wait_for_attempt
from deliverer.partners.service import Principal
from deliverer.portal import sessions

bp = Blueprint("portal", __name__, url_prefix="/portal", template_folder="../../templates")


def deliverer_settings() -> Settings:
    settings: Settings = current_app.config["DELIVERER_SETTINGS"]
    return settings


def portal_session() -> PortalSession:
    """The request's session (the guard, ``auth``, refused the request without one)."""
    found: PortalSession = g.portal_session
    return found


def partner_id() -> str:
    return portal_session().partner_id


def principal() -> Principal:
    return sessions.principal(portal_session())


def refused(error: DelivererError) -> str:
    """A refusal as the portal says it: past a rate limit, when to try again (its
    Retry-After) rather than the API's generic message."""
    wait = error.headers.get("Retry-After")
    if isinstance(error, TooManyRequests) and wait:
        return f"too many at once. Try again in {wait} s."
    return error.message


def flash(category: str, message: str) -> None:
    """For the next page: stored on the session's row, committed with the request."""
    sessions.push_flash(portal_session(), category, message)
    get_session().flush()


# How long Retry and a test event wait for their attempt's outcome before answering
# "queued" (seed 003: "if your endpoint successfully receives the webhook, you get a
# success message"), at most.
OUTCOME_WAIT_CAP = 5.0


def send_and_show(notification_id: str, what: str, delivered: str) -> None:
    """Commit (the worker must see what the request wrote; its message goes out then),
    wait briefly for the notification's attempt, and say how it went: ``delivered``, the
    new error and its hint, or that it is still on its way."""
    wait = min(deliverer_settings().resend_wait_seconds, OUTCOME_WAIT_CAP)
    status, error = commit_then(lambda: wait_for_attempt(notification_id, wait))
    if status == NotificationStatus.SENT:
        flash("ok", delivered)
    elif status is None or status == NotificationStatus.PENDING:
        flash("ok", f"{what} queued: it is sent in a moment. Reload to see the outcome.")
    else:
        error = error or {}
        hint = f" {error['hint']}" if error.get("hint") else ""
        flash("error", f"{what} failed: {error.get('message') or status}.{hint}")


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


def not_found(what: str = "page") -> tuple[str, int]:
    """Also the answer for another partner's ids: nothing says whether they exist."""
    return page("portal/error.html", 404, title="Not found",
                message=f"There is no such {what} in your account.")
