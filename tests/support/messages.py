"""What the delivery messages a test saw published (``published_tasks``) were for.

On PostgreSQL a publish sends a wake-up, and only when none is pending: a single publish
to a healthy endpoint its group's (``deliverer.delivery.wakeups.wake_groups``), otherwise the
endpoint's (``deliverer.delivery.wakeups.wake``); on SQLite a message per notification (or a
batch).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from deliverer.broker import dispatch
from deliverer.db import session_scope
from deliverer.delivery.wakeups.wake_groups import group_of
from deliverer.models import WAKE_GROUPS, Notification
from tests.support.backend import BACKEND

WAKE_UPS = BACKEND != "embedded"
DELIVERIES = (dispatch.DELIVER, dispatch.DELIVER_MANY, dispatch.DELIVER_DUE,
              dispatch.DELIVER_GROUP)


def delivery_messages(published_tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in published_tasks if t["task"] in DELIVERIES]


def expected_message(notification_id: str, *, alone: bool = True) -> tuple[str, list[Any]]:
    """(task, args) of the message a lone publish of this notification sends: on its own
    (``deliverer.publish_event``, one statement), or in a producer's transaction."""
    if not WAKE_UPS:
        return dispatch.DELIVER, [notification_id]
    with session_scope() as session:
        endpoint_id = session.scalar(select(Notification.endpoint_id)
                                     .where(Notification.id == notification_id))
    if not alone:
        return dispatch.DELIVER_DUE, [endpoint_id]
    return dispatch.DELIVER_GROUP, [group_of(endpoint_id)]


def enqueued_ids(published_tasks: list[dict[str, Any]]) -> list[str]:
    """The notifications the delivery messages are for, each once: a wake-up is for its
    endpoint's (or group's) notifications (those it woke for may have been delivered
    since)."""
    ids: list[str] = []
    endpoints: set[int] = set()
    groups: set[int] = set()
    for task in published_tasks:
        if task["task"] == dispatch.DELIVER:
            ids.extend(task["args"])
        elif task["task"] == dispatch.DELIVER_MANY:
            ids.extend(task["args"][0])
        elif task["task"] == dispatch.DELIVER_DUE:
            endpoints.add(task["args"][0])
        elif task["task"] == dispatch.DELIVER_GROUP:
            groups.add(task["args"][0])
    if endpoints or groups:
        with session_scope() as session:
            ids.extend(session.scalars(select(Notification.id).where(or_(
                Notification.endpoint_id.in_(endpoints),
                (Notification.endpoint_id % WAKE_GROUPS).in_(groups)))))
    return list(dict.fromkeys(ids))
