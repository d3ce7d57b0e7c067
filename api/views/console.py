"""``/console``: the operator console, server-rendered HTML (plain forms, no JavaScript).

Who may use it: whoever knows ``DELIVERER_ADMIN_TOKEN``, by the sign-in form (a signed
session cookie, 12 hours) or HTTP Basic auth (any user name, the token as password; for
scripts). Without a configured token the console is closed. The cookie is signed with
``DELIVERER_SECRET_KEY``, or with a key derived from the admin token, so rotating the
token signs everybody out.

Every form (sign-in included) carries a CSRF token kept in the session, compared in
constant time. Pages are sent with a strict Content-Security-Policy (no scripts at all,
styles by nonce), no caching and no framing.

Retry and Ignore call the operator services of ``deliverer.operations.replay``: the
same state changes as the partner API's, recorded on the audit trail with the outcome
``OPERATOR``, and an operator's retry is not bound by the merchant's limits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    has_request_context,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from api.db import commit_then, get_session, roll_back_refused
from deliverer.config import Settings
from deliverer.errors import DelivererError
from deliverer.models import NotificationStatus, utcnow
from deliverer.notifications.outcome import wait_for_attempt
from deliverer.operations import inspect
from deliverer.operations.replay import operator_ignore, operator_retry

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="../templates")

SESSION_MAX_AGE = 12 * 3600
COOKIE_NAME = "deliverer_console"
# How long a Retry waits for the attempt's outcome before answering "queued" (seed 003:
# "if your endpoint successfully receives the webhook, you get a success message").
RETRY_WAIT_CAP = 5.0
STATUSES = [str(s) for s in NotificationStatus]


# -- the session cookie -------------------------------------------------------------------

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


def _settings() -> Settings:
    settings: Settings = current_app.config["DELIVERER_SETTINGS"]
    return settings


# -- guard: closed, signed in, CSRF ---------------------------------------------------------

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


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


@bp.before_request
def _guard() -> Any:
    g.csp_nonce = secrets.token_urlsafe(16)
    settings = _settings()
    if not settings.admin_token:
        return _page("console/closed.html", 503)
    basic = _basic_auth(settings)
    if basic is False:
        body, status = _page("console/error.html", 401, title="Not signed in",
                             message="Wrong credentials.")
        return Response(body, status, {"WWW-Authenticate": 'Basic realm="deliverer console"'},
                        mimetype="text/html")
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(),
                                                                    expected.encode()):
            return _page("console/error.html", 400, title="Form expired",
                         message="This form is out of date (or was not sent from the "
                                 "console). Go back, reload the page and try again.")
    g.operator = "basic" if basic else ("session" if _signed_in(settings) else None)
    if g.operator is None and request.endpoint != "console.login":
        if request.method == "GET":
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        return _page("console/error.html", 401, title="Not signed in",
                     message="Your session has ended. Sign in again.")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    nonce = g.get("csp_nonce", "")
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    return _page("console/error.html", exc.code or 500, title=exc.name,
                 message=exc.description or "")


# -- template helpers -----------------------------------------------------------------------

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


# -- sign in and out ------------------------------------------------------------------------

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
    settings = _settings()
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
        return _page("console/login.html", 401, next_url=next_url)
    return _page("console/login.html", next_url=next_url)


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("console.login"))


# -- pages -------------------------------------------------------------------------------------

@bp.get("/")
def index() -> Any:
    db = get_session()
    return _page("console/endpoints.html", endpoints=inspect.failing_endpoints(db),
                 alerts=inspect.recent_alerts(db), now=utcnow())


def _endpoint_id(value: str) -> int:
    """An endpoint id filter: a positive 64-bit integer. A larger one overflowed in the
    database driver (a 500); a ValueError makes the filter ignored, like any bad one."""
    number = int(value)
    if not 0 < number < 2**63:
        raise ValueError(value)
    return number


@bp.get("/notifications")
def notifications() -> Any:
    args = request.args
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        status = None
    endpoint_id = args.get("endpoint_id", type=_endpoint_id)
    searched = any(args.get(k) for k in ("q", "partner", "reference", "status", "endpoint_id"))
    results = inspect.search_notifications(
        get_session(), q=args.get("q"), partner=args.get("partner"),
        reference=args.get("reference"), status=status, endpoint_id=endpoint_id,
        limit=args.get("limit", default=100, type=int) or 100)
    return _page("console/notifications.html", results=results, searched=searched,
                 args=args, selected_status=status, endpoint_id=endpoint_id)


@bp.get("/notifications/<notification_id>")
def notification(notification_id: str) -> Any:
    detail = inspect.notification_detail(get_session(), notification_id)
    if detail is None:
        return _page("console/error.html", 404, title="Not found",
                     message=f"No notification {notification_id}.")
    return _page("console/notification.html", d=detail, n=detail.notification)


@bp.post("/notifications/<notification_id>/retry")
def retry(notification_id: str) -> Any:
    try:
        operator_retry(get_session(), _settings(), notification_id)
    except DelivererError as exc:
        roll_back_refused(exc)
        flash(f"Retry refused: {exc.message}", "error")
        return redirect(url_for("console.notification", notification_id=notification_id))
    current_app.logger.info("operator retry of %s", notification_id,
                            extra={"notification_id": notification_id})
    wait = min(_settings().resend_wait_seconds, RETRY_WAIT_CAP)
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
    return _page("console/events.html", rows=inspect.recent_events(db, partner=partner),
                 actions=inspect.recent_actions(db), partner=partner or "")
