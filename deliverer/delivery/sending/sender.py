"""The sender: one HTTP POST of a webhook, with its outcome classified.

It never raises for a network problem: every outcome, good or bad, comes back as a
``SendResult`` so the caller can record it. Redirects are not followed (a 3xx is a
failure), the response body is read up to a cap, and a total deadline bounds the whole
exchange, since ``requests``' own timeout applies to each socket operation separately.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from deliverer.delivery.sending import netguard
from deliverer.delivery.sending.http.connections import pooled_session
from deliverer.delivery.sending.http.deadline import DeadlineExceeded, Watch, read_capped, watching
from deliverer.delivery.sending.http.errors import READ_TIMEOUT, classify_exception
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.errors import UnsafeUrl


@dataclass(frozen=True)
class SendResult:
    started_at: datetime
    duration_ms: int
    success: bool
    status_code: int | None = None
    body: str | None = None
    error: dict[str, Any] | None = None
    # Seconds the receiver asked us to wait (Retry-After on 429/503).
    retry_after: float | None = None


@dataclass(frozen=True)
class SenderConfig:
    connect_timeout: float = 5.0
    total_timeout: float = 15.0
    max_response_bytes: int = 20 * 1024
    allow_private_urls: bool = False
    user_agent: str = "deliverer/0.1"

# What a receiver sends that we store: PostgreSQL's text refuses NUL, and a refused
# attempt row was never written, so the webhook was POSTed again at every lease expiry.
_NUL = "\x00"
# A receiver's own words in a message (its reason phrase, a redirect's Location): enough
# to recognise them; the body alone is stored at length (``max_response_bytes``).
MAX_ECHOED = 300


def storable(text: str) -> str:
    """Text from a receiver, as the database takes it."""
    return text.replace(_NUL, "\N{REPLACEMENT CHARACTER}")


def _echoed(text: str) -> str:
    text = storable(text)
    return text if len(text) <= MAX_ECHOED else text[:MAX_ECHOED] + "..."


_DELTA_SECONDS = re.compile(r"[0-9]{1,20}")
# Longer than any retry cycle (30 days), which the recorder caps a wait to anyway. Without
# a bound, "Retry-After: 999999999999" overflowed the datetime arithmetic in the recorder:
# the attempt was never written and the webhook was POSTed again at every lease expiry.
MAX_RETRY_AFTER = 31 * 24 * 3600.0


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date; None when unreadable."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):  # not str.isdigit: "²" is a digit, not a number
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER)


def send(
    url: str,
    body: bytes,
    headers: dict[str, str],
    config: SenderConfig,
    started_at: datetime | None = None,
) -> SendResult:
    """POST ``body`` to ``url`` once. Never raises for network or HTTP failures.
    ``started_at``: the attempt's time as recorded, if not now (when its headers were
    signed: the portal shows its webhook-timestamp from it)."""
    started_at = started_at or datetime.now(UTC)
    start = time.monotonic()
    deadline = start + config.total_timeout
    watch = Watch()

    def elapsed_ms() -> int:
        return int((time.monotonic() - start) * 1000)

    def failure(kind: FailureKind, message: str, status: int | None = None,
                body_text: str | None = None, retry_after: float | None = None) -> SendResult:
        if (watch.fired and kind is not FailureKind.TIMEOUT) or message == READ_TIMEOUT:
            # The deadline's watchdog, the read timeout (the same deadline) and the body's
            # deadline: one message, whichever fired (httpStatus says if a status came).
            kind, message = FailureKind.TIMEOUT, (
                f"No complete response within the {config.total_timeout:g} s deadline")
        return SendResult(
            started_at=started_at, duration_ms=elapsed_ms(), success=False,
            status_code=status, body=body_text, error=error_payload(kind, message, status),
            retry_after=retry_after,
        )

    try:
        netguard.check_url_form(url)
    except UnsafeUrl as exc:
        return failure(FailureKind.INVALID_URL, exc.message)

    with watching(watch, deadline):
        all_headers = {
            "Content-Type": "application/json",
            "Accept": "*/*",
            "User-Agent": config.user_agent,
            **headers,
        }
        try:
            session = pooled_session(config.allow_private_urls)
            # Prepared directly, not by Session.prepare_request: no cookie jar to merge
            # (webhooks carry none) and none of the session's default headers, so no
            # Accept-Encoding either: a receiver cannot send a compressed body that
            # inflates past the response cap.
            prepared = requests.PreparedRequest()
            prepared.prepare(method="POST", url=url, headers=all_headers, data=body)
            # Straight to the adapter: Session.send(allow_redirects=False) still reads a 3xx
            # body in full (to compute Response.next), with no size cap and no deadline.
            response = session.get_adapter(url).send(
                prepared,
                stream=True,
                timeout=(config.connect_timeout, config.total_timeout),
                verify=True,
                cert=None,
                proxies={},
            )
        except Exception as exc:  # every failure becomes a recorded attempt, none escape
            kind, message = classify_exception(exc)
            return failure(kind, message)

        with response:
            # Headers the watchdog's shutdown ended (http.client takes the end of the
            # stream for their end) are not an answer: no status to report.
            status = None if watch.fired else response.status_code
            try:
                raw = read_capped(response, config.max_response_bytes, deadline)
            except DeadlineExceeded:
                return failure(FailureKind.TIMEOUT, READ_TIMEOUT, status)
            except Exception as exc:
                kind, message = classify_exception(exc)
                if kind is FailureKind.CONNECTION_RESET and status is not None:
                    # Its status came, its body did not: the answer was cut, not absent.
                    message = "Connection closed by the webhook host before its answer was complete"
                return failure(kind, message, status)
        text = storable(raw.decode("utf-8", errors="replace"))
        status = response.status_code
        if 200 <= status < 300:
            return SendResult(started_at=started_at, duration_ms=elapsed_ms(), success=True,
                              status_code=status, body=text)
        if 300 <= status < 400:
            location = _echoed(response.headers.get("Location", ""))
            return failure(FailureKind.REDIRECT,
                           f"HTTP {status} redirect to {location!r} (redirects are not followed)",
                           status, text)
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("Retry-After"), started_at)
        return failure(FailureKind.HTTP_STATUS,
                       f"HTTP {status} {_echoed(response.reason or '')}".strip(),
                       status, text, retry_after)
