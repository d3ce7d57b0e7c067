"""The portal's blueprint, and what every part of it uses: the session, a page, flashes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, render_template

from api.db import get_session
from deliverer.config import Settings
from deliverer.errors import DelivererError, TooManyRequests
from deliverer.models import PortalSession
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


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


def not_found(what: str = "page") -> tuple[str, int]:
    """Also the answer for another partner's ids: nothing says whether they exist."""
    return page("portal/error.html", 404, title="Not found",
                message=f"There is no such {what} in your account.")
