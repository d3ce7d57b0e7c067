"""The one place that turns errors into HTTP: ``{"statusCode", "code", "message"}``
(under the console's and the portal's prefixes, their error page)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from api.html import error_page
from deliverer.db import is_transient_abort
from deliverer.errors import DelivererError
from deliverer.http_codes import CODES

log = logging.getLogger(__name__)



def error_response(status: int, code: str, message: str, *, errors: Any = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"statusCode": status, "code": code, "message": message}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            # webargs nests errors under the location ("json", "query", "path").
            name = "" if key in ("json", "query", "path", "headers", "form") else str(key)
            out += _flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name)
        return out
    if isinstance(messages, list):
        out = []
        for item in messages:
            out += _flatten(item, prefix)
        return out
    return [f"{prefix}: {messages}" if prefix else str(messages)]


def keep_refusal(exc: DelivererError) -> None:
    """A refused request's audit row is written after the request's rollback (api.db):
    for the handler below, and for a view that answers an error in its own shape."""
    if exc.refusal is not None:
        g.refused = exc


# Seed 002's routes answer every error in its shape, ``{status, message, data}``: those
# raised before its view (the API key, the guards, routing) too.
SEED_002_PREFIX = "/api/v1/merchant/"


def answer(status: int, code: str, message: str, *, title: str = "Request refused",
            errors: Any = None, headers: dict[str, str] | None = None) -> Response:
    """An error in the shape of the path it answers: a page under the pages' prefixes,
    seed 002's body under its prefix, else ``{statusCode, code, message}``."""
    page = error_page(request.path, status, title, message)
    if page is not None:
        return page
    if request.path.startswith(SEED_002_PREFIX):
        response = jsonify({"status": "error", "message": message, "data": None})
        response.status_code = status
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response
    return error_response(status, code, message, errors=errors, headers=headers)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DelivererError)
    def _service_error(exc: DelivererError) -> Response:
        keep_refusal(exc)
        return answer(exc.status_code, exc.code, exc.message, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages")
        if messages:
            # Validation failures from the marshmallow schemas (webargs answers 422).
            details = _flatten(messages)
            return answer(400, "BAD_REQUEST", "Invalid request: " + "; ".join(details),
                           title=exc.name, errors=messages)
        message = {
            404: "Resource not found",
            405: "Method not allowed",
            413: "Request body too large",
        }.get(status, exc.description or exc.name)
        return answer(status, CODES.get(status, exc.name.upper().replace(" ", "_")),
                       message, title=exc.name)

    @app.errorhandler(OperationalError)
    def _db_unavailable(exc: DBAPIError) -> Response:
        # One line, the driver's first: an expected condition, and the statement with
        # its parameters (a payload) does not belong in the log (the operator try: 140
        # lines a request).
        cause = str(exc.orig).strip().splitlines() if exc.orig is not None else []
        if is_transient_abort(exc):
            log.warning("database kept aborting the transaction (%s): answered 503",
                        cause[0] if cause else type(exc).__name__)
        else:
            log.error("database unavailable (%s): answered 503",
                      cause[0] if cause else type(exc).__name__)
        return answer(503, "SERVICE_UNAVAILABLE",
                       "Service temporarily unavailable. Try again shortly.",
                       headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return answer(500, "INTERNAL_ERROR", "Internal server error")
