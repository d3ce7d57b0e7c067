"""Who is calling: the admin token for /internal, API keys for the partner API."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from api.db import get_session
from api.guards import refuse_malformed_json
from deliverer.errors import DelivererError, Unauthorized
from deliverer.partners.service import Principal, authenticate, key_hash


class AdminUnauthorized(DelivererError):
    status_code = 401
    code = "UNAUTHORIZED"
    message = "Admin token is missing or invalid"


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def check_admin() -> None:
    """``before_request`` guard of the internal and operator blueprints."""
    expected = current_app.config["DELIVERER_SETTINGS"].admin_token
    given = _bearer()
    # No configured token closes the internal API instead of opening it.
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise AdminUnauthorized()
    refuse_malformed_json()  # after authentication, as validation comes after it


def _raw_key() -> str | None:
    raw = request.headers.get("X-Api-Key")
    if raw is None:
        raw = _bearer()
        if raw is None and request.headers.get("Authorization"):
            raise Unauthorized("Invalid API Key format")
    return raw


def current_partner() -> Principal:
    principal: Principal | None = g.get("principal")
    if principal is None:
        principal = authenticate(get_session(), _raw_key())
        g.principal = principal
    return principal


def current_key_hash() -> str:
    """The presented key's lookup hash, for a view that resolves it in a batch."""
    return str(g.get("key_hash") or key_hash(_raw_key()))


F = TypeVar("F", bound=Callable[..., Any])


def key_resolved_in_batch(view: F) -> F:
    """Mark a view whose key is looked up with its batch (``deliverer.batching``): the guard
    still refuses a missing or malformed key (401 before anything else), without a
    query of its own."""
    view.key_resolved_in_batch = True  # type: ignore[attr-defined]
    return view


def check_partner() -> None:
    """``before_request`` guard of the partner blueprints: 401/403 before any validation."""
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "key_resolved_in_batch", False):
        g.key_hash = key_hash(_raw_key())
    else:
        current_partner()
    # A malformed body, after authentication (as validation) but before any view: the
    # routes that read none (retry, ignore, resend) ran their action on one.
    refuse_malformed_json()
