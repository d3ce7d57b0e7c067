"""Auto-disable: an endpoint that has failed without a break for ``auto_disable_after``
(5 days; scaled by ``time_scale`` like the ladder) is disabled, and its merchant alerted
and e-mailed.

Checked where a failure is recorded (``failure.record_failure``), and by beat for
endpoints nothing is being attempted on at that moment (a head whose next try is hours
away, a queue whose head is exhausted). Disabled, the endpoint is sent nothing: what it
holds stays held (FAILED, ``held``), new events to it are recorded NOT_SENT, and enabling
it again (``partners.registered.enable``, PATCH ``enabled: true``) releases what it holds,
in sequence order, at the drain rate.

Only registered endpoints (the merchant's, which it can enable again): the row of an
event's own ``callbackUrl`` keeps its ladder, which ends with the cycle.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer.alerts import service as alerts
from deliverer.config import Settings
from deliverer.delivery import endpoint_queue
from deliverer.models import Endpoint

REASON = "Failed continuously for {period}"
PER_SWEEP = 100


def threshold(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.auto_disable_after * settings.time_scale)


def period(seconds: float) -> str:
    """``auto_disable_after`` in words: "5 days", "12 hours", "90 seconds"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def failing_too_long(endpoint: Endpoint, settings: Settings, now: datetime) -> bool:
    return (endpoint.registered and endpoint.disabled_at is None
            and endpoint.failing_since is not None
            and now - endpoint.failing_since >= threshold(settings))


def disable(session: Session, endpoint: Endpoint, settings: Settings, now: datetime, *,
            notification_id: str | None = None) -> None:
    """Disable ``endpoint`` (locked FOR UPDATE by the caller), hold what climbs its
    ladder, and alert. Commits nothing."""
    reason = REASON.format(period=period(settings.auto_disable_after))
    endpoint.disabled_at = now
    endpoint.disabled_reason = reason
    session.flush()
    endpoint_queue.hold_climbers(session, endpoint.id, now)
    # What a merchant can do, said as it is (a black-box try followed the advice): held
    # ones run out with their cycles, and a resend by reference takes the event's
    # notification at the webhook URL's endpoint when it went there too (resend._PREFERRED),
    # so a registered endpoint's missed ones are recovered by period.
    afterwards = (": resend them by reference" if endpoint.is_default
                  else ": once it is enabled, recover with includeNotSent: true sends them")
    alerts.raise_alert(
        session, endpoint, alerts.KIND_AUTO_DISABLED,
        f"Webhook endpoint {alerts.describe(endpoint)} has been disabled: it "
        f"{reason[0].lower()}{reason[1:]}. What it holds is kept and sent in order once "
        f"it is enabled again ({alerts.how_to_enable(endpoint)}), each within the "
        f"{period(settings.ladder.max_age)} of its retries: POST "
        f"/api/partner/v2/endpoints/{endpoint.public_id}/recover sends older ones again. "
        f"Events published while it is disabled are not sent to it (NOT_SENT){afterwards}.",
        notification_id=notification_id, now=now)


def sweep(session: Session, settings: Settings, now: datetime, limit: int = PER_SWEEP) -> int:
    """Disable the endpoints that have been failing too long; returns how many."""
    endpoints = session.scalars(
        select(Endpoint)
        .where(Endpoint.registered.is_(True), Endpoint.disabled_at.is_(None),
               Endpoint.failing_since.is_not(None),
               Endpoint.failing_since <= now - threshold(settings))
        .order_by(Endpoint.failing_since, Endpoint.id).limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for endpoint in endpoints:
        disable(session, endpoint, settings, now)
    return len(endpoints)
