"""Handing a notification to the broker, after its row is committed."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import update

from deliverer.broker_outage import describe, is_broker_outage
from deliverer.db import session_scope
from deliverer.models import Lane, Notification, utcnow
from deliverer.scheduling import queues

log = logging.getLogger(__name__)


def _options(lane: Lane | str, due_at: datetime | None, *, argsrepr: str | None = None
             ) -> dict[str, object]:
    """``apply_async`` options for a delivery message.

    Two of them spare Celery work that cost a sixth of a publish (measured: 0.47 -> 0.38
    ms CPU), on every publish, manual retry and sweep. ``argsrepr`` (given for one id)
    is what Celery's ``saferepr`` of such plain arguments gives. ``declare=[]`` skips
    the queue declaration check: messages go to the default exchange with the queue's
    name as routing key, which needs no binding (the workers declare their queues at
    start; kombu's SQLAlchemy transport creates a missing queue on the first message).
    """
    options: dict[str, object] = {"queue": queues.BY_LANE[Lane(lane)], "declare": []}
    if argsrepr is not None:
        options.update(argsrepr=argsrepr, kwargsrepr="{}")
    if due_at is not None and due_at > utcnow():
        options["eta"] = due_at
    return options


def enqueue_delivery(
    notification_id: str, lane: Lane | str, due_at: datetime | None = None
) -> bool:
    """Send the delivery message; on a broker failure, leave the row to the beat sweep.

    Returns whether the message was sent. The row is already committed, so a broker
    outage loses nothing: we clear its ``scheduled_for`` so the next sweep picks it up.
    """
    from deliverer.delivery.tasks import deliver

    args = [notification_id]
    try:
        deliver.apply_async(args=args, **_options(lane, due_at, argsrepr=repr(args)))
        return True
    except Exception as exc:
        _log_unsent(exc, notification_id, extra={"notification_id": notification_id})
    _release([notification_id])
    return False


def enqueue_batch(notification_ids: list[str], lane: Lane | str,
                  due_at: datetime | None = None) -> bool:
    """One message for several notifications of a lane (bulk publish, sweep)."""
    if len(notification_ids) == 1:
        return enqueue_delivery(notification_ids[0], lane, due_at)
    from deliverer.delivery.tasks import deliver_many

    try:
        deliver_many.apply_async(args=[list(notification_ids)], **_options(lane, due_at))
        return True
    except Exception as exc:
        _log_unsent(exc, f"{len(notification_ids)} notifications")
    _release(notification_ids)
    return False


def _log_unsent(exc: Exception, what: str, **kwargs: Any) -> None:
    """One line for a broker outage; a traceback for anything unexpected. Either way the
    row is left to the sweep, so nothing is lost."""
    if is_broker_outage(exc):
        log.warning("broker unavailable (%s); the beat sweep will enqueue %s",
                    describe(exc), what, **kwargs)
    else:
        log.exception("could not send the message; the beat sweep will enqueue %s",
                      what, **kwargs)


def _release(notification_ids: list[str]) -> None:
    """Mark rows as having no message, so the next sweep enqueues them."""
    try:
        with session_scope() as session:
            session.execute(
                update(Notification)
                .where(Notification.id.in_(notification_ids))
                .values(scheduled_for=None)
            )
    except Exception:
        # The lost-message grace in the sweep still catches these rows, only later.
        log.exception("could not release %d notification(s) for the sweep",
                      len(notification_ids))
