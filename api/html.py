"""What the server-rendered pages (the operator console, the merchant portal) share: how
they show times (UTC, and relative) and JSON, and the headers every page is sent with: a
strict Content-Security-Policy (no script at all, styles by nonce), no framing, no
caching, no referrer."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import Blueprint, g, render_template
from flask import Response as PageResponse
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from deliverer.models import utcnow

# URL prefix -> the error page of the pages under it (``serve_pages``).
_ERROR_PAGES: dict[str, str] = {}


def serve_pages(bp: Blueprint, error_template: str) -> None:
    """On ``bp``: every answer sent with ``secure_page_headers``, and HTTP errors (404,
    405...) answered as pages of ``error_template`` (its ``title`` and ``message``), also
    those raised before a view of ``bp`` is chosen (``error_page``)."""
    assert bp.url_prefix
    _ERROR_PAGES[bp.url_prefix.rstrip("/") + "/"] = error_template

    @bp.after_request
    def _headers(response: Response) -> Response:
        return secure_page_headers(response, g.get("csp_nonce", ""))

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[str, int]:
        return (render_template(error_template, title=exc.name,
                                message=exc.description or ""), exc.code or 500)


def error_page(path: str, status: int, title: str, message: str) -> PageResponse | None:
    """An error under a prefix of pages, as a page: routing's 404 and 405 (an unknown
    path, a POST's address reloaded) and the app's guards answer before a blueprint's
    own handlers can. None elsewhere (the API's JSON stands)."""
    for prefix, template in _ERROR_PAGES.items():
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            response = PageResponse(render_template(template, title=title, message=message),
                                    status, mimetype="text/html")
            secure_page_headers(response, g.get("csp_nonce", ""))
            return response
    return None


def secure_page_headers(response: Response, nonce: str) -> Response:
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def ts(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def rel(value: datetime | None) -> str:
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


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
