"""Resending the latest webhook of a transaction or invoice (seeds 002 and 004).

A resend is a delivery of its own: it sends the event again to its callback URL, else to
the endpoint that received it (the default endpoint if it did) at its current URL, is
recorded as an attempt (trigger ``resend``, counted in ``attempt_count``) on the
notification, and changes no status of the original, so calling it again has no side
effect beyond another POST. Its progress lives on its ``partner_requests`` row.

That row is an outbox, as notifications are: PENDING until a worker takes it (SENDING,
with a lease), then SENT or FAILED. The beat sweep (``deliverer.scheduling.sweep``)
sends the message again for a PENDING row whose message was lost (the broker down at
the request's commit), and makes a SENDING row whose lease ran out (its worker died, or
could not record the POST) PENDING again: a resend the API accepted is sent at least
once. A row still open a day after the request is given up: EXPIRED. Taking the row
is a conditional UPDATE, so a message sent twice still makes one POST.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from deliverer import lease
from deliverer.broker.dispatch import enqueue_resend
from deliverer.config import Settings
from deliverer.db import in_transaction, on_commit, session_scope
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.recording.success import attempt_row
from deliverer.delivery.sending.perform import perform
from deliverer.delivery.sending.runs import RECORDING_MARGIN
from deliverer.errors import Conflict, DelivererError, NotFound, NotificationNotFound
from deliverer.models import (
    Attempt,
    Endpoint,
    Event,
    Notification,
    PartnerRequest,
    RequestKind,
    ResendStatus,
    Trigger,
    WebhookSettings,
    signing_secrets,
    utcnow,
)
from deliverer.models.endpoint import subscribed
from deliverer.notifications.audit import (
    ACCEPTED,
    check_rate,
    lock_partner,
    record_request,
    reject,
)
from deliverer.notifications.cycle import DECIDING, DECIDING_NAMES, check_deliverable
from deliverer.notifications.queries import is_uuid
from deliverer.partners.service import Principal

log = logging.getLogger(__name__)


def resend_lease(settings: Settings) -> timedelta:
    """How long a worker may hold a resend: until then the sweep hands the request to no
    other worker, so it must outlast all the worker may still do with it: its POST
    (``Settings.longest_post``), then recording it, run again through database errors for
    ``lease_seconds`` as a delivery's record is (``delivery.service.deliver``), plus that
    window's last run, which starts just before the window closes and takes as long as a
    struggling database makes it (what a batch keeps for recording, RECORDING_MARGIN)."""
    return timedelta(seconds=settings.longest_post + settings.lease_seconds
                     + RECORDING_MARGIN)


class TransactionNotFound(NotFound):
    message = "Transaction not found"


ENDPOINT_GONE = ("Webhook endpoint {id}, which received this event, was deleted: "
                 "there is nothing to resend it to")


NOT_SUBSCRIBED = ("Webhook endpoint {id} (your webhook URL) is not subscribed to event type "
                  "{type}: subscribe it, then resend")


class NoWebhookUrl(Conflict):
    message = "No webhook URL is configured for this partner"


@dataclass(frozen=True)
class ResendRequest:
    request_id: int
    reference: str
    url: str
    notification_id: str


@dataclass(frozen=True)
class _Target:
    """Where a resend goes, and what decides whether it may."""

    url: str | None
    secrets: list[str]
    facts: dict[str, Any]  # cycle.DECIDING's columns
    moves_to: tuple[str, str] | None  # check_deliverable's: the webhook URL's endpoint


# The latest event of a reference, and of its notifications the one at the default
# endpoint if it has one, else its first: one POST, to an endpoint that received it.
_LATEST = (
    select(Event, Notification, Endpoint, WebhookSettings, *DECIDING)
    .join(Notification, Notification.event_id == Event.id)
    .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == Event.partner_id)
)
_PREFERRED = (Event.created_at.desc(),
              case((Endpoint.is_default.is_(True), 0), (Endpoint.deleted_at.is_(None), 1),
                   else_=2),
              Notification.created_at)


def _target(row: Any, now: datetime) -> _Target:
    """The event's callback URL, or the endpoint's current URL and secret if it is
    registered (it moves with its notifications, and may sign with its own); else (a
    former webhook URL's row) the partner's current webhook URL, as seed 002 says."""
    event, endpoint, settings_row = row.Event, row.Endpoint, row.WebhookSettings
    facts = {name: getattr(row, name) for name in DECIDING_NAMES}
    partners = ((settings_row.signing_secret, settings_row.previous_secret,
                 settings_row.previous_secret_expires_at) if settings_row
                else (None, None, None))
    if event.callback_url or (endpoint is not None and endpoint.registered):
        own = ((endpoint.signing_secret, endpoint.previous_secret,
                endpoint.previous_secret_expires_at) if endpoint is not None
               else (None, None, None))
        return _Target(event.callback_url or endpoint.url,
                       signing_secrets(own, partners, now), facts, None)
    url = settings_row.url if settings_row else None
    return _Target(url, signing_secrets((None, None, None), partners, now), facts,
                   (event.partner_id, url) if url else None)


def _sendable_target(session: Session, row: Any, now: datetime) -> _Target:
    """``_target``, or the refusal (a DelivererError) of a resend that would go nowhere
    or where a retry would not: checked when it is asked for and again when it is sent
    (the sweep may send a lost one hours later)."""
    if row.Endpoint is not None and row.Endpoint.deleted_at is not None \
            and not row.Event.callback_url:
        # Not to the webhook URL instead: that endpoint may not take this event type.
        raise Conflict(ENDPOINT_GONE.format(id=row.Endpoint.public_id))
    target = _target(row, now)
    if not target.url:
        raise NoWebhookUrl()
    # Refused as a retry would be: the endpoint disabled, webhooks turned off.
    check_deliverable(session, target.facts, moves_to=target.moves_to, then="resend")
    if target.moves_to is not None:
        # To the webhook URL: its endpoint had unsubscribed from the event's type (why
        # no endpoint received it), and was sent it anyway (a black-box try).
        default = session.execute(select(Endpoint.public_id, Endpoint.event_types).where(
            Endpoint.partner_id == row.Event.partner_id, Endpoint.url == target.url,
            Endpoint.registered.is_(True))).first()
        if default is not None and not subscribed(default.event_types, row.Event.type):
            raise Conflict(NOT_SUBSCRIBED.format(id=default.public_id, type=row.Event.type))
    return target


def request_resend(session: Session, settings: Settings, principal: Principal,
                   reference: str, now: datetime | None = None) -> ResendRequest:
    """The latest event of ``reference``, again (seeds 002 and 004). Commits nothing."""
    return _request(session, settings, principal, reference[:200], lambda: session.execute(
        _LATEST.where(Event.partner_id == principal.partner_id, Event.reference == reference)
        .order_by(*_PREFERRED).limit(1)).first(), TransactionNotFound, now)


def request_notification_resend(session: Session, settings: Settings, principal: Principal,
                                notification_id: str,
                                now: datetime | None = None) -> ResendRequest:
    """One notification's event again, whatever its status and however old (a SENT one
    whose receiver lost it; an earlier event of a reference, which the resend by
    reference does not reach), with its webhook-id: a receiver that drops duplicates by
    it drops this one too. Sent, limited and refused as a resend by reference is: to the
    event's callback URL, else its endpoint's current URL (``_target``). Commits
    nothing."""
    def find() -> Any:
        if not is_uuid(notification_id):
            return None
        return session.execute(_LATEST.where(
            Notification.id == notification_id,
            Notification.partner_id == principal.partner_id)).first()

    # A refusal is on the notification's own audit history (the console lists it so), as
    # a refused ignore is.
    return _request(session, settings, principal, None, find, NotificationNotFound, now,
                    notification_id=notification_id if is_uuid(notification_id) else None)


def _request(session: Session, settings: Settings, principal: Principal, asked: str | None,
             find: Callable[[], Any], missing: type[NotFound], now: datetime | None, *,
             notification_id: str | None = None) -> ResendRequest:
    """The resend of the row ``find`` returns (``_LATEST``'s), on the audit trail with
    what the merchant named (``asked``, a reference; ``notification_id``) when refused;
    its message goes out at the commit."""
    now = now or utcnow()
    lock_partner(session, principal.partner_id)
    try:
        row = find()
        if row is None:
            raise missing()
        target = _sendable_target(session, row, now)
        check_rate(session, principal.partner_id, RequestKind.RESEND,
                   settings.resend_rate_per_minute, now)
    except DelivererError as error:
        reject(session, principal, RequestKind.RESEND, error, reference=asked,
               notification_id=notification_id)
        raise
    notification = row.Notification
    reference = row.Event.reference
    request_id = record_request(session, principal, RequestKind.RESEND, ACCEPTED,
                                notification_id=notification.id, reference=reference,
                                delivery_status=ResendStatus.PENDING, now=now)
    on_commit(session, lambda: enqueue_resend(request_id))
    assert target.url is not None  # _sendable_target refuses none
    return ResendRequest(request_id, reference, target.url, notification.id)


def perform_resend(request_id: int, settings: Settings) -> ResendStatus | None:
    """The worker side: one POST per resend request, however often the task runs."""
    with session_scope() as session:
        now = utcnow()
        taken = lease.take(session, PartnerRequest.lease_expires_at,
                           now + resend_lease(settings), now,
                           PartnerRequest.id == request_id,
                           PartnerRequest.delivery_status == ResendStatus.PENDING,
                           delivery_status=ResendStatus.SENDING)
        if taken != 1:
            return None
        request = session.get(PartnerRequest, request_id)
        assert request is not None and request.notification_id is not None
        row = session.execute(
            _LATEST.where(Notification.id == request.notification_id)).one()
        try:
            target = _sendable_target(session, row, now)
        except DelivererError as refusal:
            # Changed since it was asked for (deleted, disabled, webhooks off): no POST.
            log.info("resend %s not sent: %s", request_id, refusal.message)
            request.delivery_status = ResendStatus.FAILED
            request.lease_expires_at = None
            return ResendStatus.FAILED
        job = DeliveryJob(
            notification_id=row.Notification.id, lease_token="", url=target.url or "",
            body=row.Event.body.encode(), secrets=target.secrets,
            trigger=Trigger.RESEND, endpoint_id=None, endpoint_failing=False,
        )
    result = perform(job, settings)
    status = ResendStatus.SENT if result.success else ResendStatus.FAILED

    def record(session: Session) -> None:
        session.add(Attempt(**attempt_row(job, result)))
        # An attempt of the notification like any other: attemptCount counts what its
        # attempts list shows (and the receiver got).
        session.execute(update(Notification).where(Notification.id == job.notification_id)
                        .values(attempt_count=Notification.attempt_count + 1))
        # Whatever the row says now: had the sweep already taken this worker for dead and
        # made it PENDING again, this outcome spares the merchant a second POST.
        session.execute(
            update(PartnerRequest).where(PartnerRequest.id == request_id)
            .values(delivery_status=status, lease_expires_at=None)
        )

    # The POST happened: record it through a deadlock or a database restart, as
    # deliveries do, or the request stays SENDING until its lease runs out and the
    # resend is sent again.
    in_transaction(record, retry_for=settings.lease_seconds)
    return status
