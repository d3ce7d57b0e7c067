"""Request checks that apply to every route, before any view or database access.

* A body larger than ``MAX_CONTENT_LENGTH`` is refused with 413 on every route, also on
  routes that never read their body (werkzeug only enforces the limit on reading), and
  also when it is sent chunked, without a length.
* NUL characters are refused (400) in the path, the query string, JSON strings and
  form fields (the portal's and the console's): a text column on PostgreSQL cannot hold
  them (psycopg2 raises, which was a 500) and on SQLite they would be stored and sent
  on (a portal form stored an endpoint URL ending in NUL, POSTed to as ``%00``).
* Lone UTF-16 surrogates (``"\\ud800"``) are refused (400) in JSON strings: Python's
  parser lets them through, and no database driver can encode them (a
  UnicodeEncodeError deep in the database layer, which was a 500).
* UUIDs in the path are taken in either case (``canonical_ids``).
* JSON answers are ``Cache-Control: no-store`` (``no_store``).
* Numbers that JSON cannot carry are refused (400): Python's parser reads ``NaN``,
  ``Infinity`` and ``-Infinity`` (not JSON at all) and ``1e999`` (read as infinity),
  which were stored, signed and sent on in a body that is not JSON; an integer of more
  than 4300 digits makes it raise a ValueError that the view's parser let through (500).
* A body declared JSON that is not JSON is refused (400), on routes that read no body
  too (a malformed retry or ignore request ran its action): after authentication
  (``refuse_malformed_json``).
* JSON nested more than ``MAX_DEPTH`` levels deep is refused (400). Python's parser
  raises RecursionError (not ValueError) around a thousand levels, which was a 500 on
  every route; and a body that the guard could still parse might not be parsed again,
  stored or sent a few frames deeper down.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from deliverer.errors import DelivererError, ValidationFailed
from deliverer.notifications.queries import canonical_id

NUL = "\x00"
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_DEPTH = 64
# What a parsed JSON string may not hold: NUL, or a surrogate (the parser joins a pair
# of escaped surrogates into one character, so any surrogate left is a lone one).
_FORBIDDEN_IN_JSON = re.compile("[\x00\ud800-\udfff]")


class UnsupportedMediaType(DelivererError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    message = "Request bodies must be JSON (Content-Type: application/json)"


class NulCharacter(ValidationFailed):
    message = "Invalid request: NUL characters are not allowed"


class LoneSurrogate(ValidationFailed):
    message = ("Invalid request: JSON strings may not contain lone UTF-16 surrogates "
               "(\\ud800-\\udfff)")


class NotJsonNumber(ValidationFailed):
    message = "Invalid request: numbers must be finite JSON numbers"


class MalformedJson(ValidationFailed):
    message = "Invalid request: Invalid JSON body."


class NestedTooDeeply(ValidationFailed):
    message = f"Invalid request: JSON may be nested at most {MAX_DEPTH} levels deep"


class DuplicateKey(ValidationFailed):
    message = "Invalid request: a key appears twice in one JSON object"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all distinct: Python's parser keeps a repeated key's
    last value, another parser (a merchant's, a proxy's) its first, so the same body
    would mean two things (RFC 8259 leaves it to the parser)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKey(f"Invalid request: the key {json.dumps(key[:100])} appears twice "
                           "in one JSON object")
    return obj


def _refuse_constant(name: str) -> Any:
    raise NotJsonNumber(f"Invalid request: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 is JSON, but no double holds it
        raise NotJsonNumber("Invalid request: a number is out of range")
    return value


def _json_body() -> Any:
    """The parsed JSON body; None if empty or malformed, which ``refuse_malformed_json``
    answers once the request is authenticated."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except RecursionError:
        raise NestedTooDeeply() from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        g.malformed_json = True
        return None
    except ValueError:
        # Not a syntax error: int() refusing a number of more than 4300 digits, which the
        # view's parser would not catch. (A parse_int check would cost every integer.)
        raise NotJsonNumber("Invalid request: a number has too many digits") from None


def _check_json(value: Any) -> None:
    """One walk over the parsed body, without recursion (so without a depth limit of
    its own): every string, keys included, and how deep the containers nest."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            found = _FORBIDDEN_IN_JSON.search(item)
            if found:
                raise NulCharacter() if found.group() == NUL else LoneSurrogate()
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise NestedTooDeeply()
            if isinstance(item, dict):
                pending += [(key, depth) for key in item]
                pending += [(child, depth + 1) for child in item.values()]
            else:
                pending += [(child, depth + 1) for child in item]


def refuse_malformed_json() -> None:
    """``before_request`` of the API's blueprints, after their authentication (401 and 403
    come before validation): a body declared JSON that is not is a 400 on every route,
    those that read no body (retry, ignore, resend) too, whose action would run."""
    if g.get("malformed_json"):
        raise MalformedJson()


def check_request() -> None:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    if limit is not None and request.content_length is None and _chunked_past(limit):
        raise RequestEntityTooLarge()
    if NUL in request.path or any(
        NUL in key or NUL in value for key, value in request.args.items(multi=True)
    ):
        raise NulCharacter()
    if request.is_json:
        _check_json(_json_body())
    elif request.mimetype in _FORMS and any(
            NUL in key or NUL in value for key, value in request.form.items(multi=True)):
        raise NulCharacter()
    # A body that is not JSON would be read as "no fields given" and answered 200 with
    # nothing changed; say what is wrong instead.
    if (request.method in ("POST", "PUT", "PATCH") and request.content_length
            and not request.is_json
            and not request.path.startswith(("/console", "/portal"))):
        raise UnsupportedMediaType()


def _chunked_past(limit: int) -> bool:
    """Whether a body sent without a length (chunked) goes on past ``limit``: werkzeug
    stops reading it there and hands the views what it read, as if that were all (a
    JSON body cut short was answered 400 "Invalid JSON body")."""
    if not request.environ.get("wsgi.input_terminated"):
        return False  # no body without a length (WSGI)
    return (len(request.get_data(cache=True)) >= limit
            and bool(request.environ["wsgi.input"].read(1)))


# Path variables that hold UUIDs (notifications, seed 001's deliveries, partners).
_UUID_VARIABLES = ("notification_id", "delivery_id", "partner_id")


def canonical_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """UUIDs in the path in their stored form, lower case: RFC 9562 reads them in
    either case, and one copied in upper case was not found (404)."""
    for name in _UUID_VARIABLES:
        value = values.get(name) if values else None
        if isinstance(value, str):
            values[name] = canonical_id(value)  # type: ignore[index]


def no_store(response: Response) -> Response:
    """JSON answers are not kept by caches or browsers: some carry a signing secret, an
    API key or a portal link, and every one a merchant's data (the pages say so too,
    ``api.html``)."""
    if response.mimetype == "application/json" and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    app.url_value_preprocessor(canonical_ids)
    app.after_request(no_store)
    app.before_request(check_request)
