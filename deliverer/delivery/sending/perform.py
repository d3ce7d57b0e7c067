"""Performing a claimed delivery: the signed POST (``sender``), counted, and reported to
the slow lane. No database access."""

from __future__ import annotations

from deliverer import metrics
from deliverer.config import Settings
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sending import sender, signing, slow_lane
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.models import utcnow


def perform(job: DeliveryJob, settings: Settings) -> sender.SendResult:
    """The HTTP part; no database access."""
    # One instant for the signature's timestamp and the attempt's recorded start: the
    # portal shows the headers sent with webhook-timestamp from the latter.
    started_at = utcnow()
    headers = {"webhook-id": job.notification_id}
    if job.secrets:
        headers = signing.signature_headers(job.secrets, job.notification_id,
                                            int(started_at.timestamp()), job.body)
    if not job.url:
        result = sender.SendResult(started_at=started_at, duration_ms=0, success=False,
                                   error=error_payload(FailureKind.NO_URL, "No webhook URL"))
    else:
        result = sender.send(job.url, job.body, headers, sender_config(settings), started_at)
    metrics.observe_attempt(result.success, (result.error or {}).get("kind"),
                            result.duration_ms / 1000)
    return result


def perform_admitted(job: DeliveryJob, ticket: slow_lane.Ticket,
                     settings: Settings) -> sender.SendResult:
    """``perform``, then hand the slow lane's ticket back with how the send went."""
    slow_lane.GATE.started(ticket)
    try:
        result = perform(job, settings)
    except BaseException:
        slow_lane.GATE.done(ticket, None, settings)
        raise
    slow_lane.GATE.done(ticket, result, settings)
    return result


def sender_config(settings: Settings) -> sender.SenderConfig:
    return sender.SenderConfig(
        connect_timeout=settings.connect_timeout,
        total_timeout=settings.total_timeout,
        max_response_bytes=settings.max_response_bytes,
        allow_private_urls=settings.allow_private_urls,
        user_agent=settings.user_agent,
    )
