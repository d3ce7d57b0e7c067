"""Error payloads and troubleshooting hints for failed attempts (seed 003's list)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class FailureKind(StrEnum):
    HTTP_STATUS = "http_status"  # the receiver answered, but not with 2xx
    REDIRECT = "redirect"  # 3xx: never followed, always a failure
    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_RESET = "connection_reset"
    INVALID_RESPONSE = "invalid_response"  # an answer that is not HTTP
    DNS = "dns"
    TLS = "tls"
    BLOCKED = "blocked_address"  # SSRF guard refused the address
    INVALID_URL = "invalid_url"
    CONNECTION_ERROR = "connection_error"
    NO_URL = "no_url"
    ENDPOINT_DISABLED = "endpoint_disabled"
    ENDPOINT_PAUSED = "endpoint_paused"  # held: the receiver asked for a pause (Retry-After)
    WEBHOOKS_DISABLED = "webhooks_disabled"  # the merchant turned webhooks off
    NOT_A_WEBHOOK_PARTNER = "not_a_webhook_partner"  # deactivated, or moved to polling


# The message of WEBHOOKS_DISABLED, whether a claim holds a notification or a publish
# records one NOT_SENT.
WEBHOOKS_TURNED_OFF = "Webhooks are turned off"


_STATUS_HINTS = {
    400: "Bad request: your endpoint rejected the payload. Accept every webhook first, "
    "then validate it in your own processing.",
    401: "Unauthorized: your server is refusing the request due to invalid credentials. "
    "Make sure basic authentication and HMAC verification are set up properly and consider "
    "rotating the credentials.",
    403: "Forbidden: your server or a firewall refused the request. Allow our requests "
    "through and check your signature verification.",
    404: "Not found: your endpoint could not be accessed. Make sure the webhook URL is "
    "correct, reachable over the network, and that no firewall rule blocks incoming traffic.",
    410: "Gone: your server says this endpoint no longer exists. Update the webhook URL "
    "in your webhook settings.",
    413: "Payload too large: raise your server's request size limit.",
    422: "Unprocessable content: your endpoint was reached but your business logic denied "
    "the event. Accept the event first and apply validation afterwards.",
    429: "Too many requests: your server is rate limiting our requests. This can happen "
    "after a failing endpoint recovers and missed events are sent in a short time.",
    499: "Too many requests / client closed request: your server is rate limiting or "
    "dropped the request. This can happen after a failing endpoint recovers.",
    500: "Internal server error: usually a generic error from your server. Check that the "
    "endpoint is available and the route is accepting traffic.",
    502: "Bad gateway: a proxy in front of your server could not reach it. Check that your "
    "application is running behind the proxy.",
    503: "Service unavailable: your server is down or overloaded (a deployment?). We will "
    "retry; it honours Retry-After.",
    504: "Gateway timeout: a proxy in front of your server timed out waiting for it. "
    "Respond quickly and process the event asynchronously.",
}

_KIND_HINTS = {
    FailureKind.REDIRECT: "Redirects are not followed: configure the final URL (for example "
    "https instead of http, or the trailing slash your server expects).",
    FailureKind.TIMEOUT: "Timeout: your server did not answer in time. Acknowledge the "
    "webhook with a 2xx immediately and process it asynchronously.",
    FailureKind.CONNECTION_REFUSED: "Connection refused: nothing is listening at that host "
    "and port. Check that your server is running and the port in the URL is right.",
    FailureKind.CONNECTION_RESET: "Connection reset: your server or a proxy closed the "
    "connection before its answer was complete. Check your server's logs and any proxy "
    "or firewall.",
    FailureKind.INVALID_RESPONSE: "Invalid response: something answered at that host and "
    "port, but not in HTTP. Check that the URL's port is your web server's, and that an "
    "https server is not given an http:// URL.",
    FailureKind.DNS: "DNS error: the host name in the webhook URL does not resolve. Check "
    "the spelling and your DNS records.",
    FailureKind.TLS: "TLS error: the certificate could not be verified. Use a certificate "
    "from a public authority that matches the host name, with the full chain.",
    FailureKind.BLOCKED: "The webhook URL points to a private or reserved address, which "
    "is not allowed. Use a publicly reachable URL.",
    FailureKind.INVALID_URL: "The webhook URL is not a valid http(s) URL. Update it in "
    "your webhook settings.",
    FailureKind.CONNECTION_ERROR: "Connection error: we could not reach your server. Check "
    "that it is reachable from the internet.",
    FailureKind.NO_URL: "No webhook URL is configured. Set one in your webhook settings.",
    # One hint for every reason (a 410 Gone, days of failures, the merchant's own
    # disabling, a deletion: the message says which), each with its own remedy.
    FailureKind.ENDPOINT_DISABLED: "This endpoint is disabled or was deleted (the message "
    "says why). Enable a disabled one again with PATCH /api/partner/v2/endpoints/{id} "
    "(enabled: true); the default endpoint (your webhook URL) by saving your webhook "
    "settings (PUT /api/partner/v2/webhook-settings); an event's callback URL by "
    "registering it (POST /api/partner/v2/endpoints). The notifications held meanwhile "
    "are then sent. A deleted one is sent nothing more: register its URL again for the "
    "events that follow.",
    FailureKind.ENDPOINT_PAUSED: "Paused: your server answered 429 or 503 with Retry-After. "
    "What it is sent meanwhile waits behind the notification that got that answer, and "
    "goes in order once your server answers that one (or any delivery) with a 2xx.",
    FailureKind.NOT_A_WEBHOOK_PARTNER: "This partner is inactive or reads its events by "
    "polling, so no webhook is sent. Ask the provider to enable webhook delivery.",
    FailureKind.WEBHOOKS_DISABLED: "Webhooks are turned off in your webhook settings. Turn "
    "them on (PUT /api/partner/v2/webhook-settings with enabled true): the notifications "
    "held meanwhile are then sent; events published while they were off are not (resend "
    "them by reference).",
}


def hint_for(kind: FailureKind, http_status: int | None = None) -> str:
    if http_status is not None and kind in (FailureKind.HTTP_STATUS, FailureKind.REDIRECT):
        if kind is FailureKind.REDIRECT:
            return _KIND_HINTS[FailureKind.REDIRECT]
        if http_status in _STATUS_HINTS:
            return _STATUS_HINTS[http_status]
        if http_status >= 500:
            return _STATUS_HINTS[500]
        return (
            f"Your endpoint answered HTTP {http_status}. Answer any 2xx status to "
            "acknowledge the webhook."
        )
    return _KIND_HINTS.get(kind, _KIND_HINTS[FailureKind.CONNECTION_ERROR])


def error_payload(
    kind: FailureKind, message: str, http_status: int | None = None
) -> dict[str, Any]:
    return {
        "kind": str(kind),
        "message": message,
        "httpStatus": http_status,
        "hint": hint_for(kind, http_status),
    }
