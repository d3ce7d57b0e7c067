"""A notification's state transitions on a merchant's or an operator's request, each
written once: when it may be retried, its fresh cycle, and its repointing to the
partner's current webhook URL (seeds 000 and 003)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery import endpoint_queue
from deliverer.errors import Conflict
from deliverer.models import (
    Endpoint,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    WebhookSettings,
    table_of,
)
from deliverer.models.endpoint import how_to_enable
from deliverer.partners.endpoints import DISABLED, next_sequence

NOT_FAILED = "Notification is not in FAILED status"
MAX_MANUAL = "Partner webhook notification has reached the maximum number of manual retries ({n})"
ALREADY_SENT = "Notification has already been delivered"
# Not seed 000's: a retry (or a resend) that would send nothing (``check_deliverable``).
_DISABLED_THEN = ("Webhook endpoint {id} is disabled ({reason}): enable it ({how}), "
                  "then {then}")
_OFF_THEN = "Webhooks are turned off: turn them on in your webhook settings, then {then}"
ENDPOINT_DISABLED = _DISABLED_THEN.replace("{then}", "retry")
WEBHOOKS_OFF = _OFF_THEN.format(then="retry")


def webhooks_off(then: str) -> str:
    """The refusal of what would send nothing while webhooks are turned off."""
    return _OFF_THEN.format(then=then)


def endpoint_disabled(endpoint: Endpoint, then: str) -> str:
    """The refusal of what would send nothing to ``endpoint``, disabled."""
    return _disabled_then(then, public_id=endpoint.public_id, is_default=endpoint.is_default,
                          registered=endpoint.registered, reason=endpoint.disabled_reason)


def _disabled_then(then: str, *, public_id: str, is_default: bool, registered: bool,
                   reason: str | None) -> str:
    return _DISABLED_THEN.format(
        then=then, id=public_id, reason=reason or DISABLED,
        how=how_to_enable(public_id=public_id, is_default=is_default, registered=registered,
                          disabled_reason=reason))


_NOTIFICATIONS = table_of(Notification)
_REPOINT = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == bindparam("nid"))
    .values(url=bindparam("url"), endpoint_id=bindparam("endpoint_id"),
            sequence=bindparam("sequence"))
)


def check_retryable(status: str, manual_retry_count: int, settings: Settings) -> None:
    if status != NotificationStatus.FAILED:
        raise Conflict(NOT_FAILED)
    if manual_retry_count >= settings.max_manual_retries:
        raise Conflict(MAX_MANUAL.format(n=settings.max_manual_retries))


def fresh_cycle_values(now: datetime, *, due: datetime) -> dict[str, Any]:
    """Seed 000's reset for a manual retry (also an operator's replay): retryAttempts 0,
    latestErrorPayload cleared, a new 30-day cycle, next attempt on the manual lane."""
    return {
        "held": False,
        "retry_attempts": 0,
        "latest_error_payload": None,
        "status": NotificationStatus.PENDING,
        "cycle_started_at": now,
        "next_attempt_at": due,
        "lane": Lane.MANUAL,
        # A lease still held by an automatic attempt in flight is void: its outcome is
        # recorded as an attempt but no longer decides the state. Its time stays, so
        # that the POST still out keeps the row until it is answered: the fresh cycle's
        # attempt goes after it, not beside it, and an ignore meanwhile is refused.
        # Recording that POST, or handing it back unsent, frees it (``delivery.voided``).
        "lease_token": None,
        "updated_at": now,
    }


def start_fresh_cycle(notification: Notification, now: datetime, *, due: datetime) -> None:
    """``fresh_cycle_values`` applied to a loaded notification."""
    for key, value in fresh_cycle_values(now, due=due).items():
        setattr(notification, key, value)


# The endpoints whose notifications a retry leaves with them (``moves_on_retry``): a
# registered one other than the default, which the merchant moves with
# PATCH /api/partner/v2/endpoints/{id} (moving what it holds along), and a deleted one,
# whose claim stops them with the reason rather than send another endpoint's event to
# the webhook URL.
KEEPS_ITS_NOTIFICATIONS = or_(and_(Endpoint.registered.is_(True),
                                   Endpoint.is_default.is_(False)),
                              Endpoint.deleted_at.is_not(None))


def moves_on_retry(*, url: str | None, callback_url: str | None, current_url: str | None,
                   endpoint_keeps: bool) -> bool:
    """Seed 000: merchants fix their URL in the settings, then retry. A retry sends the
    notification to ``current_url`` (the partner's setting), unless its event has a
    callback URL of its own or its endpoint keeps it (``KEEPS_ITS_NOTIFICATIONS``)."""
    return not (callback_url or not current_url or current_url == url or endpoint_keeps)


# What decides whether a retry would send anything (``check_deliverable``): columns for
# a statement that outer-joins a notification to its partner's ``WebhookSettings`` and
# its endpoint (``Endpoint``), with ``KEEPS_ITS_NOTIFICATIONS`` for ``moves_on_retry``.
_TARGET_COLUMNS = tuple(getattr(Endpoint, column).label(f"target_{column}") for column in (
    "public_id", "is_default", "registered", "disabled_at", "disabled_reason"))
DECIDING = (WebhookSettings.enabled.label("webhooks_enabled"),
            KEEPS_ITS_NOTIFICATIONS.label("endpoint_keeps"), *_TARGET_COLUMNS)
DECIDING_NAMES = tuple(column.name for column in DECIDING)
_AT_URL = select(*_TARGET_COLUMNS).where(Endpoint.partner_id == bindparam("partner_id"),
                                 Endpoint.url == bindparam("url"))


def check_deliverable(session: Session, facts: Mapping[str, Any], *,
                      moves_to: tuple[str, str] | None, then: str = "retry") -> None:
    """Refuses a retry that would send nothing: its claim would hold the notification
    again (FAILED, held), and the merchant would have spent a retry for no request.
    ``facts``: the ``DECIDING`` columns. ``moves_to``: (partner id, webhook URL) when the
    retry moves the notification there (``moves_on_retry``); that URL's endpoint then
    decides (none yet: a new one, enabled), read here, as moving is rare. ``then``: what
    the merchant does once it is enabled."""
    if facts["webhooks_enabled"] is False:
        raise Conflict(webhooks_off(then))
    target: Mapping[str, Any] | None = facts
    if moves_to is not None:
        found = session.execute(_AT_URL, {"partner_id": moves_to[0],
                                          "url": moves_to[1]}).first()
        target = dict(found._mapping) if found is not None else None
    if target is not None and target["target_disabled_at"] is not None:
        raise Conflict(_disabled_then(
            then, public_id=target["target_public_id"], is_default=target["target_is_default"],
            registered=target["target_registered"], reason=target["target_disabled_reason"]))


def repoint(session: Session, *, notification_id: str, partner_id: str,
            endpoint_id: int | None, current_url: str, now: datetime) -> tuple[str, int, int]:
    """Sends the notification to ``current_url`` from now on (where ``moves_on_retry``
    says so), under a new sequence number of that URL's endpoint. Returns the new
    (url, endpoint id, sequence)."""
    new_endpoint_id, sequence = next_sequence(session, partner_id, current_url, now)
    session.connection().execute(_REPOINT, {"nid": notification_id, "url": current_url,
                                            "endpoint_id": new_endpoint_id,
                                            "sequence": sequence})
    if endpoint_id is not None and endpoint_id != new_endpoint_id:
        # It may have been the head of the old endpoint's queue: the next one held behind
        # it takes its place, or nothing would ever release them.
        endpoint_queue.promote_next(session, endpoint_id, now)
    return current_url, new_endpoint_id, sequence


# What a retry of one notification decides by: its event's callback URL, the partner's
# current webhook URL, and ``DECIDING`` (whether its endpoint keeps it, and is enabled);
# and its endpoint's URL now (an operator's replay sends there).
_TARGET_OF = (
    select(Event.callback_url, WebhookSettings.url.label("current_url"),
           Endpoint.url.label("endpoint_url"), *DECIDING)
    .select_from(Notification)
    .join(Event, Event.id == Notification.event_id)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == Notification.partner_id)
    .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
    .where(Notification.id == bindparam("nid"))
)


def check_deliverable_of(session: Session, notification: Notification) -> dict[str, Any]:
    """``check_deliverable`` of a loaded notification (an operator's retry or replay):
    a retry that its claim would hold again is refused, not started on a fresh cycle
    whose only attempt is the claim's synthetic error. Returns what it read, for
    ``repoint_to_current_url``."""
    facts = dict(session.execute(_TARGET_OF, {"nid": notification.id}).one()._mapping)
    check_deliverable(session, facts, moves_to=(
        (notification.partner_id, facts["current_url"]) if _moves(notification, facts)
        else None))
    return facts


def _moves(notification: Notification, facts: Mapping[str, Any]) -> bool:
    return moves_on_retry(url=notification.url, callback_url=facts["callback_url"],
                          current_url=facts["current_url"],
                          endpoint_keeps=bool(facts["endpoint_keeps"]))


def repoint_to_current_url(session: Session, notification: Notification,
                           facts: Mapping[str, Any], now: datetime) -> None:
    """``repoint`` of a loaded notification; ``facts``: ``check_deliverable_of``'s."""
    current_url = facts["current_url"]
    if current_url and _moves(notification, facts):
        notification.url, notification.endpoint_id, notification.sequence = repoint(
            session, notification_id=notification.id, partner_id=notification.partner_id,
            endpoint_id=notification.endpoint_id, current_url=current_url, now=now)
