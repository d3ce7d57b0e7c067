"""The outbox's hand-over rule, written once.

A notification's next attempt is a row (``next_attempt_at``). One due within the sweep's
horizon is handed to the broker: a message with its due time as ETA, sent after the
commit that marks the row handed over (``scheduled_for`` its due time, ``enqueued_at``
now). One due later is left to the beat sweep, the outbox reader
(``scheduling/sweep.py``), which hands it over once it comes near: no message carries an
ETA beyond the horizon (on Redis, long ETAs are redelivered after the visibility timeout
and held in worker memory). A row whose message was lost is handed over again by the
sweep: its ``scheduled_for`` is no longer its due time, or it was handed over longer
than the lost-message grace ago. One whose message the broker refused is given back to
the sweep at once (``to_sweep``, ``resend_to_sweep``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.sql.elements import BindParameter

from deliverer.config import Settings
from deliverer.db import session_scope
from deliverer.models import (
    Endpoint,
    Notification,
    PartnerRequest,
    ResendStatus,
    WakeGroup,
    endpoint_group,
    locked_in_id_order,
    table_of,
)

log = logging.getLogger(__name__)


def horizon(settings: Settings, now: datetime) -> datetime:
    """Rows due up to this are handed to the broker now."""
    return now + timedelta(seconds=settings.sweep_horizon)


def hands_over(settings: Settings, due: datetime | None, now: datetime) -> bool:
    """Whether a row due at ``due`` (None: never) goes to the broker now."""
    return due is not None and due <= horizon(settings, now)


def handed_over(due: Any, now: Any) -> dict[str, Any]:
    """The marks of a row handed over at ``now`` (values, columns or binds)."""
    return {"scheduled_for": due, "enqueued_at": now}


LEFT_TO_SWEEP: dict[str, Any] = {"scheduled_for": None, "enqueued_at": None}


def marks(settings: Settings, due: datetime | None, now: datetime) -> dict[str, Any]:
    """A row due at ``due``: handed over, or left to the sweep."""
    return handed_over(due, now) if hands_over(settings, due, now) else dict(LEFT_TO_SWEEP)


_NO_WAKE = (update(table_of(Endpoint))
            .where(locked_in_id_order(Endpoint.id.in_(bindparam("endpoint_ids",
                                                                expanding=True))))
            .values(wake_sent_at=None))
_GROUP_IDS: BindParameter[list[int]] = bindparam("group_ids", expanding=True)
# A group's wake-up is pending for every marked endpoint of the group.
_E = table_of(Endpoint).c
_NO_GROUP_WAKE_ENDPOINTS = (update(table_of(Endpoint))
                            .where(locked_in_id_order(endpoint_group(_E.id).in_(_GROUP_IDS),
                                                      _E.wake_sent_at.is_not(None)))
                            .values(wake_sent_at=None))
_NO_GROUP_WAKE = (update(table_of(WakeGroup)).where(WakeGroup.id.in_(_GROUP_IDS))
                  .values(wake_sent_at=None))


def to_sweep(notification_ids: list[str], endpoint_ids: Sequence[int] = (),
             group_ids: Sequence[int] = ()) -> None:
    """Mark rows as having no message, so the next sweep enqueues them (and the
    endpoints, and the groups with all their endpoints, as having no wake-up pending:
    endpoints first, as a publish locks them)."""
    try:
        with session_scope() as session:
            if notification_ids:
                session.execute(
                    update(Notification)
                    .where(Notification.id.in_(notification_ids))
                    .values(scheduled_for=None)
                )
            if endpoint_ids:
                session.execute(_NO_WAKE, {"endpoint_ids": sorted(endpoint_ids)})
            if group_ids:
                session.execute(_NO_GROUP_WAKE_ENDPOINTS, {"group_ids": sorted(group_ids)})
                session.execute(_NO_GROUP_WAKE, {"group_ids": sorted(group_ids)})
    except Exception:
        # The lost-message grace in the sweep still catches these rows, only later.
        log.exception("could not release %d notification(s) for the sweep",
                      len(notification_ids))


# A resend request's hand-over time when its message could not be sent: past any
# lost-message grace, so the next sweep hands it over (collect_lost_resends).
NO_MESSAGE = datetime(2000, 1, 1, tzinfo=UTC)


def resend_to_sweep(request_id: int) -> None:
    """A merchant's resend request whose message the broker refused: the next sweep
    hands it over, rather than after the lost-message grace."""
    try:
        with session_scope() as session:
            session.execute(update(PartnerRequest).where(
                PartnerRequest.id == request_id,
                PartnerRequest.delivery_status == ResendStatus.PENDING)
                .values(enqueued_at=NO_MESSAGE))
    except Exception:
        log.exception("could not release resend request %d for the sweep", request_id)
