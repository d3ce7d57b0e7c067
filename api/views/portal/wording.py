"""The services word their messages for the API: its requests and its fields. The portal
says the same in the terms of its own pages, here, for every message it shows (flashes,
error pages, alerts, a disabled endpoint's reason, an attempt's message and hint)."""

from __future__ import annotations

import re
from typing import Any

from api.views.portal.blueprint import bp
from deliverer.delivery.troubleshooting import FailureKind

# (API phrase, the portal's), in the order they are applied: whole phrases before the
# field names they contain.
_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), portal) for pattern, portal in (
        # models.endpoint.how_to_enable, and the recover refusal.
        (r"PATCH /api/partner/v2/endpoints/\S+ with enabled: true",
         "press Enable in the endpoint's settings"),
        (r"register its URL with POST /api/partner/v2/endpoints",
         "add its URL as an endpoint"),
        # how_to_enable's for the default endpoint: the Enable button does it too.
        (r"\bsave your webhook settings\b", "press Enable in the endpoint's settings"),
        (r"\(PATCH enabled: true releases", "(Enable, in its settings, releases"),
        # The rotation and the form's fields.
        (r"The current secret is in GET /webhook-settings; r", "R"),
        (r"[Rr]otate with overlapSeconds 0", "Rotate with no overlap"),
        (r"overlapSeconds must be", "The overlap must be"),
        (r"rateLimit must be", "The rate limit must be"),
        (r'eventTypes must not be empty: use \["\*"\] for every event',
         "Tick at least one event type (or Every event type)"),
        (r"\beventTypes\b", "event types"),
        # The merchant is "you" on every page, never the provider's "partner".
        (r"A partner may have at most (\d+) endpoints", r"You may have at most \1 endpoints"),
        # An API's ISO time, as the portal's pages show times (the rotation's end).
        (r"\b(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(?:\+00:00|Z)",
         r"\1 \2 UTC"),
    ))

# The hints whose remedy is an API request, as the portal's pages do it.
_HINTS = {
    str(FailureKind.ENDPOINT_DISABLED):
        "This endpoint is disabled or was deleted (the message says why). Enable a "
        "disabled one again with Enable in its settings; the notifications held meanwhile "
        "are then sent. A deleted one is sent nothing more: add its URL again for the "
        "events that follow.",
    str(FailureKind.WEBHOOKS_DISABLED):
        "Webhooks are turned off in your webhook settings. Turn them on with the button "
        "on the Endpoints page: the notifications held meanwhile are then sent; events "
        "published while they were off are not (resend them by reference).",
}


def say(text: str | None) -> str:
    """``text`` in the portal's terms."""
    text = text or ""
    for pattern, portal in _PHRASES:
        text = pattern.sub(portal, text)
    return text


def hint(error_payload: dict[str, Any] | None) -> str:
    """An attempt's hint (``troubleshooting.error_payload``) in the portal's terms."""
    payload = error_payload or {}
    return _HINTS.get(str(payload.get("kind")), say(payload.get("hint")))


# App-wide: an error page of the portal's prefix is rendered outside its blueprint too.
bp.add_app_template_filter(say, "portal_terms")
bp.add_app_template_filter(hint, "portal_hint")
