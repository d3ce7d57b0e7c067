"""Handing work to the broker, by task name, once the rows it needs are committed.

Services enqueue through here and never import a task module: the tasks import the
services, so the dependency points one way. Messages name their task
(``Celery.send_task``), go to the queue of their lane (``queues``), and are sent after
the commit that made them necessary (``deliverer.db.on_commit``). A broker outage loses
nothing: the row is committed, and the beat sweep hands it over again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import current_app

from deliverer import outbox
from deliverer.broker import queues
from deliverer.broker_outage import describe, is_broker_outage
from deliverer.models import (
    Lane,
    utcnow,
)

log = logging.getLogger(__name__)

# The task names: part of the broker contract (producers in other services send
# ``deliverer.publish_event`` by name), so never renamed.
DELIVER = "deliverer.deliver"
DELIVER_MANY = "deliverer.deliver_many"
DELIVER_DUE = "deliverer.deliver_due"
DELIVER_GROUP = "deliverer.deliver_group"
RESEND = "deliverer.resend"
SEND_ALERT_EMAIL = "deliverer.send_alert_email"
SWEEP_DUE = "deliverer.sweep_due"
PUBLISH_EVENT = "deliverer.publish_event"

# Which queue a task's messages go to when the sender names none (Celery's task_routes);
# every other task goes to the maintenance queue.
ROUTES: dict[str, dict[str, str]] = {
    DELIVER: {"queue": queues.FIRST},
    RESEND: {"queue": queues.MANUAL},
    DELIVER_MANY: {"queue": queues.FIRST},
    DELIVER_DUE: {"queue": queues.FIRST},
    DELIVER_GROUP: {"queue": queues.FIRST},
    SWEEP_DUE: {"queue": queues.MAINTENANCE},
    PUBLISH_EVENT: {"queue": queues.MAINTENANCE},
}


def _send(name: str, args: Sequence[Any], **options: Any) -> None:
    current_app.send_task(name, args=args, ignore_result=True, **options)


def _options(lane: Lane | str, due_at: datetime | None, *, argsrepr: str | None = None
             ) -> dict[str, object]:
    """Send options for a delivery message.

    Two of them spare Celery work on every publish, manual retry and sweep. ``argsrepr``
    (given for one id) is what Celery's ``saferepr`` of such plain arguments gives.
    ``declare=[]`` skips the queue declaration check: messages go to the default exchange
    with the queue's name as routing key, which needs no binding (the workers declare
    their queues at start; kombu's SQLAlchemy transport creates a missing queue on the
    first message).
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
    args = [notification_id]
    try:
        _send(DELIVER, args, **_options(lane, due_at, argsrepr=repr(args)))
        return True
    except Exception as exc:
        _log_unsent(exc, notification_id, extra={"notification_id": notification_id})
    outbox.to_sweep([notification_id])
    return False


def enqueue_batch(notification_ids: list[str], lane: Lane | str,
                  due_at: datetime | None = None) -> bool:
    """One message for several notifications of a lane (bulk publish, sweep)."""
    if len(notification_ids) == 1:
        return enqueue_delivery(notification_ids[0], lane, due_at)
    try:
        _send(DELIVER_MANY, [list(notification_ids)], **_options(lane, due_at))
        return True
    except Exception as exc:
        _log_unsent(exc, f"{len(notification_ids)} notifications")
    outbox.to_sweep(notification_ids)
    return False


def enqueue_wake(endpoint_id: int, notification_ids: Sequence[str] = ()) -> bool:
    """The wake-up of an endpoint with first attempts due (``delivery/wakeups/wake.py``).

    On a broker failure the endpoint's mark is cleared, so that the next publish sends a
    wake-up again, and ``notification_ids`` (those the wake-up was for) are left to the
    sweep, as ``enqueue_delivery`` leaves its one.
    """
    if _send_wake(DELIVER_DUE, endpoint_id, f"the first attempts due to endpoint {endpoint_id}"):
        return True
    outbox.to_sweep(list(notification_ids), [endpoint_id])
    return False


def enqueue_group_wake(group_id: int, endpoint_ids: Sequence[int] = (),
                       notification_ids: Sequence[str] = ()) -> bool:
    """The wake-up of a group of endpoints (``delivery/wakeups/wake_groups.py``). On a broker
    failure the group's mark and those of ``endpoint_ids`` (the endpoints it was sent
    for) are cleared, and ``notification_ids`` left to the sweep, as ``enqueue_wake``
    does."""
    if _send_wake(DELIVER_GROUP, group_id,
                  f"the first attempts due to wake-up group {group_id}"):
        return True
    outbox.to_sweep(list(notification_ids), list(endpoint_ids), [group_id])
    return False


def _send_wake(task: str, target: int, what: str) -> bool:
    """Send a wake-up of ``target`` (an endpoint or a group); False if the broker
    refused it (logged)."""
    args = [target]
    try:
        _send(task, args, **_options(Lane.FIRST, None, argsrepr=repr(args)))
        return True
    except Exception as exc:
        _log_unsent(exc, what)
        return False


def enqueue_resend(request_id: int) -> bool:
    """The message for a merchant's resend request (its row is the outbox). On a broker
    failure the request is left to the next sweep, as a notification's is: it waited the
    lost-message grace (two minutes) where a retry accepted beside it went at the next
    sweep, and the failure was a traceback (a black-box try)."""
    try:
        _send(RESEND, [request_id], queue=queues.MANUAL)
        return True
    except Exception as exc:
        _log_unsent(exc, f"resend request {request_id}")
    outbox.resend_to_sweep(request_id)
    return False


def enqueue_alert_email(alert_id: int) -> None:
    """The message that e-mails an alert (the alert sweep offers a lost one again)."""
    _send(SEND_ALERT_EMAIL, (alert_id,))  # a tuple, as the task's delay() sent it


def _log_unsent(exc: Exception, what: str, **kwargs: Any) -> None:
    """One line for a broker outage; a traceback for anything unexpected. Either way the
    row is left to the sweep, so nothing is lost."""
    if is_broker_outage(exc):
        log.warning("broker unavailable (%s); the beat sweep will enqueue %s",
                    describe(exc), what, **kwargs)
    else:
        log.exception("could not send the message; the beat sweep will enqueue %s",
                      what, **kwargs)
