"""Who may use the portal: the bearer of a live session cookie, obtained by opening a
single-use link (``deliverer.portal.sessions``). Every form carries a CSRF token derived
from the session; a read-only session's POSTs are refused (sign-out aside). Pages are
sent with the console's Content-Security-Policy: no script at all, styles by nonce.

Opening a link shows a page with one button, and only its POST spends the token: mail
scanners and chat unfurlers fetch the links they see, and would otherwise use it up
before the merchant does. That form is protected by a cookie of its own
(double-submit), so nobody can sign a browser into another merchant's portal.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from flask import current_app, g, redirect, request, url_for
from werkzeug.wrappers import Response

from api.db import commit_then, get_session
from api.html import serve_pages
from api.views.portal.blueprint import bp, deliverer_settings, page, portal_session
from deliverer.errors import DelivererError, TooManyRequests
from deliverer.models import utcnow
from deliverer.portal import sessions

COOKIE = "deliverer_portal"
ENTER_COOKIE = "deliverer_portal_enter"
# Reachable without a session.
OPEN_ENDPOINTS = {"portal.enter", "portal.signed_out"}
# A read-only session may still POST these.
READ_ONLY_POSTS = {"portal.logout"}


def _refused(title: str, message: str, status: int) -> tuple[str, int]:
    return page("portal/error.html", status, title=title, message=message)


@bp.before_request
def _guard() -> Any:
    g.csp_nonce = secrets.token_urlsafe(16)
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    raw = request.cookies.get(COOKIE)
    found = sessions.authenticate(get_session(), raw)
    if found is None or raw is None:
        return _refused("Signed out", "Your portal session has ended (or this browser never "
                        "had one). Ask for a new portal link.", 401)
    g.portal_session = found
    g.portal_csrf = sessions.csrf_token(raw)
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        if not hmac.compare_digest(sent.encode(), g.portal_csrf.encode()):
            return _refused("Form expired", "This form is out of date (or was not sent from "
                            "the portal). Go back, reload the page and try again.", 400)
        if found.read_only and request.endpoint not in READ_ONLY_POSTS:
            return _refused("Read-only session", "This session can look but not act: ask "
                            "for a portal link without readOnly to do this.", 403)
    return None


serve_pages(bp, "portal/error.html")


def _set_cookie(response: Response, name: str, value: str, max_age: int, path: str) -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        secure=request.is_secure, samesite="Lax")


@bp.route(sessions.ENTER_PATH.removeprefix("/portal"), methods=["GET", "POST"])
def enter() -> Any:
    token = request.values.get("token", "")
    if request.method == "GET":
        check = secrets.token_urlsafe(24)
        body, status = page("portal/enter.html", token=token, check=check)
        response = Response(body, status, mimetype="text/html")
        _set_cookie(response, ENTER_COOKIE, check, 900, url_for("portal.enter"))
        return response
    check = request.cookies.get(ENTER_COOKIE, "")
    if not check or not hmac.compare_digest(check.encode(),
                                            request.form.get("check", "").encode()):
        return _refused("Form expired", "Open the portal link again, then press Continue.",
                        400)
    try:
        attempt = sessions.admit(get_session(), deliverer_settings(),
                                 request.remote_addr or "")
    except TooManyRequests as exc:
        return _refused("Too many sign-ins", "Too many portal links were opened from your "
                        f"address. Try again in {exc.headers.get('Retry-After', '60')} s.",
                        429)
    try:
        # The attempt counts from its commit, failed until the link proves good
        # (sessions.admit).
        raw, row = commit_then(lambda: sessions.exchange(get_session(), token, attempt))
    except DelivererError as exc:
        return _refused("Link not valid", exc.message, 403)
    current_app.logger.info("portal session %s opened for partner %s from %s", row.id,
                            row.partner_id, request.remote_addr)
    response = redirect(url_for("portal.index"))
    lifetime = int((row.expires_at - utcnow()).total_seconds())
    _set_cookie(response, COOKIE, raw, max(1, lifetime), url_for("portal.index"))
    response.delete_cookie(ENTER_COOKIE, path=url_for("portal.enter"))
    return response


@bp.get("/signed-out")
def signed_out() -> Any:
    return page("portal/error.html", 200, title="Signed out",
                message="You are signed out of the portal. Ask for a new portal link to "
                        "come back.")


@bp.post("/logout")
def logout() -> Any:
    sessions.sign_out(get_session(), portal_session())
    response = redirect(url_for("portal.signed_out"))
    response.delete_cookie(COOKIE, path=url_for("portal.index"))
    # Back after signing out showed the last page from the browser's back/forward cache
    # (Chromium keeps no-store pages there now): on a shared computer, the next person
    # saw the merchant's data (the portal try). This empties the site's cache.
    response.headers["Clear-Site-Data"] = '"cache"'
    return response
