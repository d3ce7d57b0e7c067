"""Numbers about the pipeline: queue depths, what is due, success rates, broker backlog.

Shared by ``deliverer stats`` and the scrape-time gauges of ``/metrics``. The queries an
every-15-seconds scrape runs (``due_summary``, ``failing_endpoint_count``) stay cheap on
a large table: the due ones read the partial index ``ix_notifications_due``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from deliverer import lease
from deliverer.broker import queues
from deliverer.models import (
    Attempt,
    Endpoint,
    EndpointStatus,
    Notification,
    NotificationStatus,
    still_to_try,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueSummary:
    count: int
    oldest_due_at: datetime | None
    lag_seconds: float  # how late the most overdue notification is (0 when none is due)


@dataclass(frozen=True)
class EndpointRate:
    partner_id: str
    url: str
    attempts: int
    successes: int
    endpoint_id: str | None = None  # the public id; None for attempts of no endpoint

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class Stats:
    generated_at: datetime
    window_seconds: float
    by_status: dict[str, int]
    held: int
    exhausted: int
    due: DueSummary
    failing_endpoints: int
    endpoints: list[EndpointRate]
    broker: dict[str, int | None] | None = field(default=None)
    # Registered endpoints by status (ACTIVE, FAILING, DISABLED).
    endpoint_statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "generatedAt": self.generated_at.isoformat(),
            "notifications": {"byStatus": self.by_status, "held": self.held,
                              "exhausted": self.exhausted},
            "due": {"count": self.due.count, "lagSeconds": round(self.due.lag_seconds, 3),
                    "oldestDueAt": self.due.oldest_due_at.isoformat()
                    if self.due.oldest_due_at else None},
            "failingEndpoints": self.failing_endpoints,
            "endpointsByStatus": self.endpoint_statuses,
            "windowSeconds": self.window_seconds,
            "endpoints": [{"partnerId": e.partner_id, "endpointId": e.endpoint_id,
                           "url": e.url, "attempts": e.attempts, "successes": e.successes,
                           "successRate": round(e.success_rate, 4)}
                          for e in self.endpoints],
            "brokerQueues": self.broker,
        }


def status_counts(session: Session) -> dict[str, int]:
    """Notifications per status (every status listed, zeros included)."""
    counts = {str(s): 0 for s in NotificationStatus}
    for status, count in session.execute(
        select(Notification.status, func.count()).group_by(Notification.status)
    ):
        counts[str(status)] = int(count)
    return counts


def failed_breakdown(session: Session) -> tuple[int, int]:
    """(held behind their endpoint's head, exhausted: no attempt left) among FAILED."""
    held, exhausted = session.execute(
        select(
            func.coalesce(func.sum(case((Notification.held.is_(True), 1), else_=0)), 0),
            func.coalesce(func.sum(case(
                (~still_to_try(), 1),
                else_=0)), 0),
        ).where(Notification.status == NotificationStatus.FAILED)
    ).one()
    return int(held), int(exhausted)


def due_summary(session: Session, now: datetime | None = None) -> DueSummary:
    """Notifications whose next attempt is due and that no worker holds, and how late the
    oldest one is. One in flight is being worked on: counted, it made autoscaling see
    work waiting, and a killed worker's POST showed overdue while its lease ran (a
    black-box try); once the lease is out it is waiting again, and counted."""
    now = now or utcnow()
    count, oldest = session.execute(
        select(func.count(), func.min(Notification.next_attempt_at)).where(
            # The first two match the partial index ix_notifications_due; the lease is
            # read from each due row.
            Notification.next_attempt_at.is_not(None),
            Notification.next_attempt_at <= now,
            lease.is_free(Notification.lease_expires_at, now),
        )
    ).one()
    # MIN() keeps the column's type (UTCDateTime): an aware datetime on every backend.
    lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return DueSummary(int(count), oldest, lag)


def failing_endpoint_count(session: Session) -> int:
    """Endpoints failing now and still tried (callback URLs' too): not deleted ones, nor
    disabled ones. Either is tried no more, and counted, a deleted one stayed for good
    (an alert on the gauge never cleared: a black-box try) and a disabled one beside
    "0 FAILING" paged operators for endpoints they cannot help (the operator try)."""
    return int(session.scalar(
        select(func.count()).select_from(Endpoint)
        .where(Endpoint.failing_since.is_not(None), Endpoint.deleted_at.is_(None),
               Endpoint.disabled_at.is_(None))
    ) or 0)


def endpoint_statuses(session: Session) -> dict[str, int]:
    """Registered (merchant-visible) endpoints by status, every status listed."""
    status = case((Endpoint.disabled_at.is_not(None), EndpointStatus.DISABLED.value),
                  (Endpoint.failing_since.is_not(None), EndpointStatus.FAILING.value),
                  else_=EndpointStatus.ACTIVE.value)
    counts = {str(s): 0 for s in EndpointStatus}
    for name, count in session.execute(
        select(status, func.count()).where(Endpoint.registered.is_(True)).group_by(status)
    ):
        counts[str(name)] = int(count)
    return counts


def endpoint_success_rates(session: Session, since: datetime,
                           limit: int = 100) -> list[EndpointRate]:
    """Attempts and successes per endpoint and URL attempted since ``since``, worst
    first: a partner's endpoints each have their own line, and an endpoint moved to
    another URL in the window one per URL (one line, printed with the new URL, blamed it
    for the old one's failures: a black-box try)."""
    successes = func.sum(case((Attempt.success.is_(True), 1), else_=0))
    rows = session.execute(
        select(Notification.partner_id, Endpoint.public_id, Attempt.url, func.count(),
               successes)
        .join(Notification, Notification.id == Attempt.notification_id)
        .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
        .where(Attempt.started_at >= since)
        .group_by(Notification.partner_id, Endpoint.public_id, Attempt.url)
    ).all()
    rates = [EndpointRate(str(p), str(u), int(n), int(s or 0), e)
             for p, e, u, n, s in rows]
    rates.sort(key=lambda r: (r.success_rate, -r.attempts, r.url))
    return rates[:limit]


def broker_queue_depths(celery_app: Any,
                        names: Sequence[str] = queues.ALL) -> dict[str, int | None]:
    """Messages waiting in each deliverer queue; None for a queue that could not be read.

    Asks the broker through kombu (a passive queue declare), which works for Redis (it
    sums the priority sub-lists), kombu's SQLAlchemy transport and AMQP alike. Messages a
    worker has already fetched (prefetched, or held for their ETA) are not waiting.
    """
    depths: dict[str, int | None] = {name: None for name in names}
    try:
        with celery_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            for name in names:
                try:
                    depths[name] = int(channel.queue_declare(queue=name,
                                                             passive=True).message_count)
                except Exception as exc:
                    # Redis keeps no key for an empty queue: a passive declare says 404.
                    if getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc):
                        depths[name] = 0
                    else:
                        log.warning("could not read the depth of %s: %s", name, exc)
    except Exception as exc:
        log.warning("broker unreachable for queue depths: %s", exc)
    return depths


def collect(session: Session, *, window: timedelta = timedelta(hours=1),
            now: datetime | None = None, celery_app: Any = None,
            endpoint_limit: int = 100) -> Stats:
    now = now or utcnow()
    held, exhausted = failed_breakdown(session)
    return Stats(
        generated_at=now,
        window_seconds=window.total_seconds(),
        by_status=status_counts(session),
        held=held,
        exhausted=exhausted,
        due=due_summary(session, now),
        failing_endpoints=failing_endpoint_count(session),
        endpoint_statuses=endpoint_statuses(session),
        endpoints=endpoint_success_rates(session, now - window, endpoint_limit),
        broker=broker_queue_depths(celery_app) if celery_app is not None else None,
    )
