"""``POST /api/partner/v2/endpoints/{id}/recover``: after an outage of its server, a
merchant gives the FAILED notifications one of its endpoints got in a period a fresh
cycle, as a manual retry does (``cycle.fresh_cycle_values``), without retrying them one
by one. Asked to, it also takes those it was not sent because it was disabled when
they were published (NOT_SENT, ``endpoint_disabled``): after an auto-disable, what the
merchant missed meanwhile has no other way to it (a resend by reference goes to the
webhook URL when the event went there too). Not those the merchant ignored, nor those
published while webhooks were turned off, which were turned off on purpose.

They are released oldest first, paced at ``Settings.drain_rate`` per second, as a
recovered endpoint's held notifications are: each gets its own due time, and the beat
sweep hands them to the workers as they fall due (``scheduling.sweep``), so a server
that just came back is not hit by the whole backlog at once. A recover started while an
earlier one is still being released queues behind it. At most ``MAX_RECOVERED`` are
recovered per request (the oldest; calling again takes the next ones). Notifications
with an attempt in flight are left to that attempt. Requests are on the audit trail and
limited per partner (``Settings.recover_rate_per_minute``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    String,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from deliverer import lease
from deliverer.config import Settings
from deliverer.delivery.troubleshooting import FailureKind
from deliverer.delivery.undeliverable import ENDPOINT_DELETED
from deliverer.errors import Conflict, DelivererError, ValidationFailed
from deliverer.models import (
    Attempt,
    Endpoint,
    Lane,
    Notification,
    NotificationStatus,
    PartnerRequest,
    RequestKind,
    table_of,
    utcnow,
)
from deliverer.models.endpoint import DISABLED_BY_MERCHANT
from deliverer.notifications.audit import (
    ACCEPTED,
    OPERATOR,
    check_rate,
    lock_partner,
    record_request,
    reject,
)
from deliverer.notifications.cycle import fresh_cycle_values, webhooks_off
from deliverer.partners import registered, webhook_settings
from deliverer.partners.service import Principal

MAX_RECOVERED = 10_000
SINCE_AFTER_UNTIL = "since must not be later than until"
ENDPOINT_DISABLED = ("The endpoint is disabled: enable it first (PATCH enabled: true "
                     "releases what it holds)")

_NOTIFICATIONS = table_of(Notification)
_FRESH_VALUES: dict[str, Any] = {
    **{k: bindparam(f"v_{k}") for k in fresh_cycle_values(utcnow(), due=utcnow())
       if k != "next_attempt_at"},
    "scheduled_for": None, "enqueued_at": None,
    # The endpoint's URL now: a move repoints what is queued, not what was NOT_SENT,
    # which went to the URL it had left (the review of includeNotSent).
    "url": bindparam("url")}
# Each its own due time, ``start`` + its place in the order x ``spacing``: on PostgreSQL
# one statement over the ids in order (a row's UPDATE each took 2 s for 10,000 here,
# 6.5 s on a table of millions in a scale try); elsewhere (SQLite) one per row.
_IN_ORDER = (func.unnest(bindparam("ids", type_=postgresql.ARRAY(String())))
             .table_valued("id", with_ordinality="place").render_derived("released"))
_FRESH_ALL = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == _IN_ORDER.c.id)
    .values({**_FRESH_VALUES, "next_attempt_at": bindparam(
        "start", type_=_NOTIFICATIONS.c.next_attempt_at.type)
        + (_IN_ORDER.c.place - 1) * bindparam("spacing", type_=Interval())})
)
_FRESH_ONE = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == bindparam("nid"))
    .values({**_FRESH_VALUES, "next_attempt_at": bindparam("due")})
)


@dataclass(frozen=True)
class Recovered:
    endpoint_id: str  # public id
    recovered: int
    # More FAILED notifications of the period are left (beyond MAX_RECOVERED).
    more: bool
    # When the last one recovered falls due (None: none recovered).
    last_due_at: datetime | None


def recoverable(endpoint: Endpoint, include_not_sent: bool) -> ColumnElement[bool]:
    """FAILED, and with ``include_not_sent`` NOT_SENT because ``endpoint`` was disabled
    when they were published, by a 410, days of failures or an operator. Not those:
    - its merchant disabled it for (deliberate, as webhooks turned off);
    - its deletion stopped (the same kind), or an endpoint before it on its row had;
    - the merchant ignored (ignoring keeps the row's error: told apart by its request);
    - a resend by reference delivered (it leaves the row NOT_SENT)."""
    failed = Notification.status == NotificationStatus.FAILED
    if not include_not_sent:
        return failed
    ignored = exists().where(PartnerRequest.notification_id == Notification.id,
                             PartnerRequest.kind == RequestKind.IGNORE,
                             PartnerRequest.outcome.in_((ACCEPTED, OPERATOR)))
    delivered = exists().where(Attempt.notification_id == Notification.id,
                               Attempt.success.is_(True))
    error = Notification.latest_error_payload
    return or_(failed, and_(
        Notification.status == NotificationStatus.NOT_SENT,
        error["kind"].as_string() == str(FailureKind.ENDPOINT_DISABLED),
        error["message"].as_string().not_in((ENDPOINT_DELETED, DISABLED_BY_MERCHANT)),
        Notification.created_at >= endpoint.created_at, ~ignored, ~delivered))


def recover(session: Session, settings: Settings, principal: Principal, endpoint_id: str,
            since: datetime, until: datetime | None = None,
            now: datetime | None = None, *, include_not_sent: bool = False) -> Recovered:
    """A fresh cycle for the FAILED notifications of the partner's endpoint
    ``endpoint_id`` (its public id) created from ``since`` to ``until`` (now if None),
    with ``include_not_sent`` also the NOT_SENT ones its being disabled left unsent,
    in the session's transaction, which the caller commits. ``principal`` is who asks:
    the partner and its API key (``Principal(partner_id, None)`` for a caller without
    one). Refused (and on the audit trail): another partner's or an unknown endpoint
    (404), a disabled one or webhooks turned off (409), ``since`` after ``until`` (400),
    the rate limit (429)."""
    now = now or utcnow()
    until = until or now
    lock_partner(session, principal.partner_id)
    try:
        if since > until:
            raise ValidationFailed(SINCE_AFTER_UNTIL)
        endpoint = registered.get(session, principal.partner_id, endpoint_id)
        if endpoint.disabled_at is not None:
            raise Conflict(ENDPOINT_DISABLED)
        if webhook_settings.turned_off(session, principal.partner_id):
            # It answered 'recovered: 0' (a black-box try): retries are refused so.
            raise Conflict(webhooks_off("recover"))
        check_rate(session, principal.partner_id, RequestKind.RECOVER,
                   settings.recover_rate_per_minute, now)
    except DelivererError as error:
        reject(session, principal, RequestKind.RECOVER, error, reference=endpoint_id[:200])
    ids = list(session.scalars(
        select(Notification.id)
        .where(Notification.endpoint_id == endpoint.id,
               recoverable(endpoint, include_not_sent),
               Notification.created_at >= since, Notification.created_at <= until,
               lease.is_free(Notification.lease_expires_at, now))
        .order_by(Notification.created_at, Notification.sequence)
        .limit(MAX_RECOVERED + 1)
        # A worker recording an attempt holds its row and may update others of the
        # endpoint's queue: waiting for one row while holding others could deadlock.
        # A row it holds is being attempted now, and that attempt decides it.
        .with_for_update(skip_locked=True)))
    more = len(ids) > MAX_RECOVERED
    ids = ids[:MAX_RECOVERED]
    record_request(session, principal, RequestKind.RECOVER, ACCEPTED,
                   reference=endpoint.public_id, now=now)
    if not ids:
        return Recovered(endpoint.public_id, 0, more, None)
    spacing = timedelta(seconds=1.0 / settings.drain_rate)
    start = _released_until(session, endpoint.id, now, spacing)
    values = {f"v_{k}": v for k, v in fresh_cycle_values(now, due=now).items()}
    values["url"] = endpoint.url
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_FRESH_ALL, {**values, "ids": ids, "start": start,
                                        "spacing": spacing})
    else:
        connection.execute(_FRESH_ONE, [{**values, "nid": nid, "due": start + i * spacing}
                                        for i, nid in enumerate(ids)])
    return Recovered(endpoint.public_id, len(ids), more, start + (len(ids) - 1) * spacing)


def _released_until(session: Session, endpoint_key: int, now: datetime,
                    spacing: timedelta) -> datetime:
    """When this recover may start releasing: now, or after what an earlier recover (or
    manual retries) of the endpoint still has due on the manual lane, so two recovers
    in a row are not released at twice the rate."""
    latest = session.scalar(
        select(func.max(Notification.next_attempt_at))
        .where(Notification.endpoint_id == endpoint_key,
               Notification.status == NotificationStatus.PENDING,
               Notification.lane == Lane.MANUAL))
    if latest is None or latest < now:
        return now
    return latest + spacing
