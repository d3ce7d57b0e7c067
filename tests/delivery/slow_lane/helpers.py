"""What the slow-lane tests share: their settings, a fake clock, a send's result, an
endpoint's key, and marking an endpoint slow (in the database or on a gate)."""

from __future__ import annotations

from deliverer.config import Settings
from deliverer.delivery.sending import slow_lane
from deliverer.delivery.sending.sender import SendResult
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.models import utcnow
from tests.support import helpers as h

SLOW = dict(slow_send_seconds=1.0, slow_endpoint_concurrency=2, slow_window=60.0,
            total_timeout=0.5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def slow_settings(settings: Settings) -> Settings:
    return settings.with_overrides(**SLOW)


def send_result(seconds: float, kind: FailureKind | None = None) -> SendResult:
    return SendResult(started_at=utcnow(), duration_ms=int(seconds * 1000),
                      success=kind is None,
                      error=error_payload(kind, "x") if kind is not None else None)


def mark_slow(key: slow_lane.Key, settings: Settings) -> None:
    ticket = slow_lane.GATE.admit(key, settings)
    assert ticket is not None
    slow_lane.GATE.done(ticket, send_result(0.5, FailureKind.TIMEOUT), settings)


def endpoint_key_of(nid: str) -> slow_lane.Key:
    """The slow lane's key of the notification's endpoint (at its URL)."""
    row = h.notification(nid)
    assert row.endpoint_id is not None and row.url is not None
    return slow_lane.key_for(row.endpoint_id, row.url)


def mark_slow_on(gate: slow_lane.EndpointGate, key: object, settings: Settings) -> None:
    ticket = gate.admit(key, settings)
    assert ticket is not None
    gate.done(ticket, send_result(0.5, FailureKind.TIMEOUT), settings)
