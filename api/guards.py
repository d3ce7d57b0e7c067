"""Request checks that apply to every route, before any view or database access.

* A body larger than ``MAX_CONTENT_LENGTH`` is refused with 413 on every route, also on
  routes that never read their body (werkzeug only enforces the limit on reading).
* NUL characters are refused (400) in the path, the query string and JSON strings: a
  text column on PostgreSQL cannot hold them (psycopg2 raises, which was a 500) and on
  SQLite they would be stored and sent on.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from deliverer.errors import DelivererError, ValidationFailed

NUL = "\x00"
_MAX_DEPTH = 64


class UnsupportedMediaType(DelivererError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    message = "Request bodies must be JSON (Content-Type: application/json)"


class NulCharacter(ValidationFailed):
    message = "Invalid request: NUL characters are not allowed"


def _has_nul(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return NUL in value
    if depth > _MAX_DEPTH:
        return False  # the JSON parser's own recursion limit applies long before this
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


def check_request() -> None:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    if NUL in request.path or any(
        NUL in key or NUL in value for key, value in request.args.items(multi=True)
    ):
        raise NulCharacter()
    # silent: malformed JSON is reported by the view's schema, in its own words.
    if request.is_json and _has_nul(request.get_json(silent=True)):
        raise NulCharacter()
    # A body that is not JSON would be read as "no fields given" and answered 200 with
    # nothing changed; say what is wrong instead.
    if (request.method in ("POST", "PUT", "PATCH") and request.content_length
            and not request.is_json and not request.path.startswith("/console")):
        raise UnsupportedMediaType()


def init_app(app: Flask) -> None:
    app.before_request(check_request)
