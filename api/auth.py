"""Who is calling: the admin token for /internal, API keys for the partner API."""

from __future__ import annotations

import hmac

from flask import current_app, g, request

from api.db import get_session
from deliverer.errors import DelivererError, Unauthorized
from deliverer.partners.service import Principal, authenticate


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


def current_partner() -> Principal:
    principal: Principal | None = g.get("principal")
    if principal is None:
        raw = request.headers.get("X-Api-Key")
        if raw is None:
            raw = _bearer()
            if raw is None and request.headers.get("Authorization"):
                raise Unauthorized("Invalid API Key format")
        principal = authenticate(get_session(), raw)
        g.principal = principal
    return principal


def check_partner() -> None:
    """``before_request`` guard of the partner blueprints: 401/403 before any validation."""
    current_partner()
