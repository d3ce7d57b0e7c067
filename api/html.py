"""What every server-rendered page (the operator console, the merchant portal) is sent
with: a strict Content-Security-Policy (no script at all, styles by nonce), no framing,
no caching, no referrer."""

from __future__ import annotations

from werkzeug.wrappers import Response


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
