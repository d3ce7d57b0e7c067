"""What a merchant is told about a failed attempt: the error payload and its hint."""

from __future__ import annotations

import pytest

from deliverer.delivery.troubleshooting import FailureKind, error_payload, hint_for

pytestmark = pytest.mark.unit


def test_error_payload_shape():
    payload = error_payload(FailureKind.HTTP_STATUS, "HTTP 500 Internal Server Error", 500)
    assert set(payload) == {"kind", "message", "httpStatus", "hint"}
    assert payload["kind"] == "http_status"
    assert payload["httpStatus"] == 500
    assert payload["hint"].startswith("Internal server error")


@pytest.mark.parametrize("status, start", [
    (400, "Bad request"), (401, "Unauthorized"), (403, "Forbidden"), (404, "Not found"),
    (410, "Gone"), (413, "Payload too large"), (422, "Unprocessable"), (429, "Too many"),
    (500, "Internal server error"), (502, "Bad gateway"), (503, "Service unavailable"),
    (504, "Gateway timeout"),
    (507, "Internal server error"),  # any other 5xx gets the generic server-error hint
])
def test_status_hints(status, start):
    assert hint_for(FailureKind.HTTP_STATUS, status).startswith(start)


def test_unknown_4xx_hint_names_the_status():
    assert "HTTP 418" in hint_for(FailureKind.HTTP_STATUS, 418)


def test_redirect_hint_whatever_the_status():
    for status in (301, 302, 307, 308):
        assert hint_for(FailureKind.REDIRECT, status).startswith("Redirects are not followed")


@pytest.mark.parametrize("kind, start", [
    (FailureKind.TIMEOUT, "Timeout"),
    (FailureKind.CONNECTION_REFUSED, "Connection refused"),
    (FailureKind.CONNECTION_RESET, "Connection reset"),
    (FailureKind.INVALID_RESPONSE, "Invalid response"),
    (FailureKind.DNS, "DNS error"),
    (FailureKind.TLS, "TLS error"),
    (FailureKind.BLOCKED, "The webhook URL points to a private"),
    (FailureKind.INVALID_URL, "The webhook URL is not a valid"),
    (FailureKind.CONNECTION_ERROR, "Connection error"),
    (FailureKind.NO_URL, "No webhook URL"),
])
def test_kind_hints(kind, start):
    payload = error_payload(kind, "msg")
    assert payload == {"kind": str(kind), "message": "msg", "httpStatus": None,
                       "hint": hint_for(kind)}
    assert payload["hint"].startswith(start)


def test_hints_for_dns_and_tls_kinds():
    # DNS failures need a resolver, which the loopback-only API tests do not use.
    assert "DNS" in hint_for(FailureKind.DNS)
    assert "certificate" in hint_for(FailureKind.TLS)
    assert "Connection refused" in hint_for(FailureKind.CONNECTION_REFUSED)
    assert "Timeout" in hint_for(FailureKind.TIMEOUT)


def test_the_disabled_endpoints_hint_names_each_remedy():
    """It told every disabled or deleted endpoint's merchant to save the webhook
    settings, which enables only the default endpoint after a 410 (two black-box tries:
    a registered endpoint stayed disabled, a deleted one was told it answered 410)."""
    hint = hint_for(FailureKind.ENDPOINT_DISABLED)
    assert "410" not in hint
    for remedy in ("PATCH /api/partner/v2/endpoints/{id}", "PUT /api/partner/v2/webhook-settings",
                   "POST /api/partner/v2/endpoints"):
        assert remedy in hint
