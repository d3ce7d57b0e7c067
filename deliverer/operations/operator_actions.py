"""Operator actions on one notification, from the console: retry it whatever its
merchant's limits, or ignore it; and what bulk replay (``replay``) shares with them.

An operator retry resets a notification exactly like a merchant's manual retry (a fresh
cycle on the manual lane, sent to the partner's current webhook URL, queued after the
commit) but is not bound by the merchant's limits (3 manual retries per notification, 10
a minute): an operator is the escape hatch when those are exhausted. It still obeys the
status rule: only FAILED notifications are retried; a SENT one never is. It does not use
up the merchant's manual retries (``manual_retry_count`` unchanged). Nothing is pushed to
a partner publishing sends no webhook to (the POLLING flow, an inactive partner): those
are refused with ``NotPushed``.

Every operator action is on the audit trail: a ``partner_requests`` row with no API key
and the outcome ``OPERATOR``. The merchant rate limits count ``ACCEPTED`` rows only, so
operator work never eats into a merchant's allowance.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer import outbox
from deliverer.broker.dispatch import enqueue_delivery
from deliverer.config import Settings
from deliverer.db import on_commit
from deliverer.errors import Conflict, NotificationNotFound, NotPushed
from deliverer.models import (
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    PartnerRequest,
    RequestKind,
    not_receiving_webhooks,
    utcnow,
)
from deliverer.notifications.audit import ACCEPTED, OPERATOR
from deliverer.notifications.cycle import (
    NOT_FAILED,
    check_deliverable_of,
    repoint_to_current_url,
    start_fresh_cycle,
)
from deliverer.notifications.ignore import ignore
from deliverer.notifications.queries import is_uuid
from deliverer.partners.endpoints import next_sequence
from deliverer.partners.service import Principal

NO_URL = "The partner has no webhook URL to send to"


def not_pushed(partner: Partner) -> str | None:
    """Why publishing sends the partner no webhook (POLLING flow, inactive), or None: an
    operator must not push what the partner was never to receive."""
    return not_receiving_webhooks(partner.active, partner.flow)


def check_pushed(partner: Partner) -> None:
    reason = not_pushed(partner)
    if reason is not None:
        raise NotPushed(reason)


def record_operator_action(session: Session, partner_id: str, kind: str, now: datetime, *,
                           notification_id: str | None = None,
                           reference: str | None = None) -> PartnerRequest:
    """An operator's action on the audit trail: no API key, outcome ``OPERATOR``."""
    row = PartnerRequest(partner_id=partner_id, api_key_id=None, kind=kind, outcome=OPERATOR,
                         notification_id=notification_id, reference=reference,
                         created_at=now)
    session.add(row)
    return row


def requeue(session: Session, settings: Settings, notification: Notification,
            facts: Mapping[str, Any], now: datetime, *, due_at: datetime | None = None
            ) -> bool:
    """Reset ``notification`` like a manual retry and queue it once the session commits.

    Mirrors ``deliverer.notifications.manual_retry`` minus the limits and minus
    ``manual_retry_count``. ``due_at`` (bulk replay at a bounded rate) delays the attempt:
    within the sweep horizon it is enqueued with that ETA, later the beat sweep enqueues
    it. Returns False, changing nothing, when there is no URL to send to. ``facts``:
    ``check_deliverable_of``'s, which the caller has checked.
    """
    endpoint_id = notification.endpoint_id
    repoint_to_current_url(session, notification, facts, now)
    if notification.endpoint_id is not None and notification.endpoint_id == endpoint_id:
        # Its endpoint's URL now: a move repoints what is queued, not what was NOT_SENT,
        # which went to the URL the endpoint had left when replayed (the review).
        notification.url = facts["endpoint_url"] or notification.url
    if not notification.url:
        return False
    if notification.endpoint_id is None:
        # Never had an endpoint (it was NOT_SENT at publish: webhooks disabled): give it
        # one, so ordering, health and the per-endpoint queue apply to it like any other.
        notification.endpoint_id, notification.sequence = next_sequence(
            session, notification.partner_id, notification.url, now)
    due = max(now, due_at) if due_at is not None else now
    start_fresh_cycle(notification, now, due=due)
    for name, value in outbox.marks(settings, due, now).items():
        setattr(notification, name, value)
    if outbox.hands_over(settings, due, now):
        nid = notification.id
        eta = due if due > now else None
        on_commit(session, lambda: enqueue_delivery(nid, Lane.MANUAL, eta))
    return True


def _lock(session: Session, notification_id: str) -> Notification:
    if not is_uuid(notification_id):
        raise NotificationNotFound()
    row = session.scalar(select(Notification).where(Notification.id == notification_id)
                         .with_for_update())
    if row is None:
        raise NotificationNotFound()
    return row


def operator_retry(session: Session, settings: Settings, notification_id: str,
                   now: datetime | None = None) -> Notification:
    """Retry one FAILED notification now, whatever its merchant limits. Commits nothing."""
    now = now or utcnow()
    notification = _lock(session, notification_id)
    if notification.status != NotificationStatus.FAILED:
        raise Conflict(NOT_FAILED)
    partner = session.get(Partner, notification.partner_id)
    assert partner is not None  # a foreign key
    check_pushed(partner)
    facts = check_deliverable_of(session, notification)  # endpoint disabled, webhooks off
    if not requeue(session, settings, notification, facts, now):
        raise Conflict(NO_URL)
    record_operator_action(session, notification.partner_id, RequestKind.RETRY, now,
                           notification_id=notification.id)
    session.flush()
    return notification


def operator_ignore(session: Session, notification_id: str,
                    now: datetime | None = None) -> Notification:
    """Take a notification out of the retry queue for good: the merchant's Ignore.

    Runs the partner API's own ``ignore`` (so the endpoint's queue moves on the same
    way), then relabels its audit row as an operator's. Commits nothing.
    """
    now = now or utcnow()
    owner = _lock(session, notification_id).partner_id
    notification = ignore(session, Principal(owner, None), notification_id, now)
    row = session.scalar(
        select(PartnerRequest)
        .where(PartnerRequest.notification_id == notification.id,
               PartnerRequest.kind == RequestKind.IGNORE,
               PartnerRequest.api_key_id.is_(None),
               PartnerRequest.outcome == ACCEPTED)
        .order_by(PartnerRequest.id.desc()).limit(1)
    )
    if row is not None:
        row.outcome = OPERATOR
    session.flush()
    return notification
