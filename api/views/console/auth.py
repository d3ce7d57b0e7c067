"""Who may use the console: the admin token, by the sign-in form (a signed session cookie)
or HTTP Basic auth; a CSRF token on every form; the security headers of every page."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from flask import (
    Flask,
    current_app,
    flash,
    g,
    has_request_context,
    redirect,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.wrappers import Response

from api.html import serve_pages
from api.views.console.blueprint import bp, deliverer_settings, page
from deliverer.config import Settings

SESSION_MAX_AGE = 12 * 3600
COOKIE_NAME = "deliverer_console"


def console_secret(settings: Settings) -> bytes | None:
    if settings.secret_key:
        return settings.secret_key.encode()
    if settings.admin_token:
        return hmac.new(settings.admin_token.encode(), b"deliverer console session v1",
                        hashlib.sha256).digest()
    return None


def _operator_mark(settings: Settings) -> str:
    """Stored in the session at sign-in; a rotated admin token no longer matches it."""
    assert settings.admin_token
    key = console_secret(settings) or b""
    return hmac.new(key, b"operator:" + settings.admin_token.encode(),
                    hashlib.sha256).hexdigest()[:32]


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, keyed from the deliverer settings at each request
    (the token can change under a running app), Secure on HTTPS requests."""

    salt = "deliverer-console"
    digest_method = staticmethod(hashlib.sha256)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        secret = console_secret(app.config["DELIVERER_SETTINGS"])
        if secret is None:
            return super().get_signing_serializer(app)
        return URLSafeTimedSerializer(
            secret, salt=self.salt, serializer=self.serializer,
            signer_kwargs={"key_derivation": self.key_derivation,
                           "digest_method": self.digest_method})

    def get_cookie_secure(self, app: Flask) -> bool:
        if app.config["SESSION_COOKIE_SECURE"]:
            return True
        return has_request_context() and request.is_secure


@bp.record_once
def _setup(state: Any) -> None:
    app: Flask = state.app
    app.session_interface = ConsoleSessionInterface()
    if app.config.get("SESSION_COOKIE_NAME") in (None, "session"):
        app.config["SESSION_COOKIE_NAME"] = COOKIE_NAME
    app.config["SESSION_COOKIE_SAMESITE"] = app.config.get("SESSION_COOKIE_SAMESITE") or "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _basic_auth(settings: Settings) -> bool | None:
    """True/False when Basic credentials were sent (right/wrong), None when none were."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return None
    given = (auth.password or "").encode()
    return bool(settings.admin_token) and hmac.compare_digest(
        given, (settings.admin_token or "").encode())


def _signed_in(settings: Settings) -> bool:
    mark, at = session.get("op"), session.get("at")
    if not isinstance(mark, str) or not isinstance(at, int | float):
        return False
    if not 0 <= time.time() - at <= SESSION_MAX_AGE:
        return False
    return hmac.compare_digest(mark, _operator_mark(settings))


@bp.before_request
def _guard() -> Any:
    g.csp_nonce = secrets.token_urlsafe(16)
    settings = deliverer_settings()
    if not settings.admin_token:
        return page("console/closed.html", 503)
    basic = _basic_auth(settings)
    if basic is False:
        current_app.logger.warning("failed console sign-in (Basic auth) from %s",
                                   request.remote_addr)
        body, status = page("console/error.html", 401, title="Not signed in",
                            message="Wrong credentials.")
        return Response(body, status, {"WWW-Authenticate": 'Basic realm="deliverer console"'},
                        mimetype="text/html")
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(),
                                                                    expected.encode()):
            return page("console/error.html", 400, title="Form expired",
                        message="This form is out of date (or was not sent from the "
                                 "console). Go back, reload the page and try again.")
    g.operator = "basic" if basic else ("session" if _signed_in(settings) else None)
    if g.operator is None and request.endpoint != "console.login":
        if request.method == "GET":
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        return page("console/error.html", 401, title="Not signed in",
                    message="Your session has ended. Sign in again.")
    return None


serve_pages(bp, "console/error.html")


# C0 and C1 control characters and DEL.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _safe_next(target: str | None) -> str:
    """``target`` itself if it is a path on the console, else the console's first page.

    Checked as it will be sent, not through urlsplit(), which drops tabs, line breaks
    and leading blanks before it parses: a line break passed its check and went into the
    Location header (a 500).
    """
    if (not target or _CONTROL.search(target) or "\\" in target
            or not target.startswith("/console")):
        return url_for("console.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    settings = deliverer_settings()
    next_url = _safe_next(request.values.get("next"))
    if g.operator is not None and request.method == "GET":
        return redirect(next_url)
    if request.method == "POST":
        given = request.form.get("token", "").encode()
        if hmac.compare_digest(given, (settings.admin_token or "").encode()):
            session.clear()
            session["op"] = _operator_mark(settings)
            session["at"] = int(time.time())
            session["csrf"] = secrets.token_urlsafe(32)
            flash("Signed in.", "ok")
            current_app.logger.info("operator signed in to the console from %s",
                                    request.remote_addr)
            return redirect(next_url)
        current_app.logger.warning("failed console sign-in from %s", request.remote_addr)
        flash("Wrong admin token.", "error")
        return page("console/login.html", 401, next_url=next_url)
    return page("console/login.html", next_url=next_url)


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("console.login"))
