"""A single publish on PostgreSQL: one statement, committed as it ends.

``record_events`` takes five round trips for one event besides the pool's ping (BEGIN,
the partner and its endpoints, the sequence numbers and wake-up marks, the rows, COMMIT),
each statement parsed and planned again. Here a statement of data-modifying CTEs does it
all, prepared once per connection (``deliverer.prepared``) and run in autocommit
(``db.autocommitted``): it reads the partner, inserts the event (unless its idempotency
key was recorded: then nothing more), reserves the next number on each endpoint the
event goes to (the registered endpoints subscribed to its type, or its callback URL's
endpoint) and sets their wake-up marks, and inserts the notifications. The decisions are
``record_events``'s, made by PostgreSQL: NOT_SENT with the same reasons when webhooks are
off (inactive, polling, turned off), when no endpoint is subscribed, when there is no URL,
and for a disabled endpoint.

Two cases are left to ``record_events``: a publish whose idempotency key was already
recorded (the recorded event is returned, or the key refused) and a partner whose webhook
URL was saved without its default endpoint row (sent by URL, as it always was). For them
the statement writes nothing and says so (``publish_alone`` returns None).

The reservation locks each endpoint row until the statement commits, with the
notifications: the wake-up dedupe's argument (``delivery/wakeups/wake.py``) holds as for a publish
in a transaction. An endpoint changed meanwhile is checked again against its latest row.
A healthy endpoint whose mark the statement set marks its group too, in the statement
(``delivery/wakeups/wake_groups.py``): the publish sends the group's wake-up, not the endpoint's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.types import TypeEngine

from deliverer.broker.dispatch import enqueue_group_wake, enqueue_wake
from deliverer.config import Settings
from deliverer.db import autocommitted, run_after_commit
from deliverer.delivery.sending import netguard
from deliverer.delivery.troubleshooting import WEBHOOKS_TURNED_OFF, FailureKind, error_payload
from deliverer.delivery.wakeups import wake, wake_groups
from deliverer.errors import PartnerNotFound, ValidationFailed
from deliverer.models import (
    Endpoint,
    Event,
    Notification,
    NotificationStatus,
    Partner,
    PartnerFlow,
    WebhookSettings,
    endpoint_group,
    table_of,
    utcnow,
)
from deliverer.models.base import constant
from deliverer.models.endpoint import new_endpoint_id
from deliverer.models.partner import INACTIVE, POLLING
from deliverer.partners.endpoints import (
    DISABLED,
    publish_lock,
    reserve_subscribed,
    reserve_url,
    woke,
)
from deliverer.prepared import prepared
from deliverer.publishing.envelope import new_event
from deliverer.publishing.published import Delivery, Published
from deliverer.publishing.rows import (
    NO_URL,
    event_row,
    made_pending,
    no_subscriber,
    notification_row,
)

_EVENTS, _NOTIFICATIONS = table_of(Event), table_of(Notification)
_P, _W, _E, _V, _N = (table_of(m).c for m in (Partner, WebhookSettings, Endpoint, Event,
                                                Notification))
# The call's values: the event's row (``e_``), and what the endpoints' statements take.
_EVENT_ROW = {c.name: bindparam(f"e_{c.name}", type_=c.type) for c in _EVENTS.c}
_PARTNER_ID, _TYPE, _EVENT_ID = (_EVENT_ROW[k] for k in ("partner_id", "type", "id"))
_NOW = bindparam("s_now", type_=_N.created_at.type)
# Where the event goes by URL (its callback URL), or None: to the registered endpoints.
_URL = bindparam("p_url", type_=_V.callback_url.type)

# Stand-ins given to ``notification_row`` and ``made_pending`` to find which of their
# values are the call's (parameters) and which are the same on every call (written into
# the statement): the rows stay defined there alone.
_AS_PARTNER, _AS_EVENT, _AS_NOW = "partner", "event", datetime.min.replace(tzinfo=UTC)


def _in_sql(value: Any) -> ColumnElement[Any]:
    for stand_in, param in ((_AS_PARTNER, _PARTNER_ID), (_AS_EVENT, _EVENT_ID),
                            (_AS_NOW, _NOW)):
        if value is stand_in:
            return param
    return constant(value)


def _cast(value: ColumnElement[Any], type_: TypeEngine[Any]) -> ColumnElement[Any]:
    """``value`` cast to a column's type, but a string to an unbounded one: an explicit
    cast to VARCHAR(n) cuts a longer string silently, where the INSERT refuses it (as
    the ORM path does)."""
    if isinstance(type_, String) and type_.length is not None:
        type_ = String()
    return cast(value, type_)


def _typed(columns: Mapping[str, ColumnElement[Any]]) -> list[ColumnElement[Any]]:
    """A notification row's values in column order, cast to the columns' types: in an
    INSERT ... SELECT PostgreSQL types the SELECT's values on their own."""
    return [_cast(columns[c.name], c.type) for c in _NOTIFICATIONS.c]


def _error(kind: FailureKind, message: ColumnElement[str]) -> ColumnElement[Any]:
    """``error_payload(kind, message)`` built by PostgreSQL, its keys in the same order."""
    return func.json_build_object(*chain.from_iterable(
        (constant(key), message if key == "message" else constant(value))
        for key, value in error_payload(kind, "").items()))


def _not_pushed(partner: Any) -> ColumnElement[Any]:
    """``rows.not_pushed`` of the partner's columns, built by PostgreSQL."""
    return case(
        (~partner.active, _error(FailureKind.NOT_A_WEBHOOK_PARTNER, constant(INACTIVE))),
        (partner.flow != constant(PartnerFlow.WEBHOOK),
         _error(FailureKind.NOT_A_WEBHOOK_PARTNER, constant(POLLING))),
        (partner.settings_enabled.is_(False),
         _error(FailureKind.WEBHOOKS_DISABLED, constant(WEBHOOKS_TURNED_OFF))),
        else_=_error(FailureKind.NO_URL, constant(NO_URL)))


@functools.cache
def _statement() -> Select[Any]:
    partner = (
        select(and_(func.coalesce(_W.enabled, constant(False)), _P.active,
                    _P.flow == constant(PartnerFlow.WEBHOOK)).label("enabled"),
               _P.active, _P.flow, _W.enabled.label("settings_enabled"),
               _W.url.label("default_url"),
               exists().where(_E.partner_id == _P.id, _E.registered.is_(True))
               .label("registered"),
               publish_lock(_P.id))
        .select_from(table_of(Partner).outerjoin(table_of(WebhookSettings),
                                                 _W.partner_id == _P.id))
        .where(_P.id == _PARTNER_ID)
        .cte("partner"))
    legacy = and_(partner.c.enabled, _URL.is_(None), ~partner.c.registered,
                  partner.c.default_url.is_not(None))
    go = select(partner).where(~legacy).cte("go")
    # The event, unless its idempotency key was recorded: the unique index says so. (A
    # look-up of the key is planned once per connection, and a plan made while the
    # table was small read every event of the partner: a publish slower with each.)
    new_event = (pg_insert(_EVENTS)
                 .from_select(list(_EVENT_ROW),
                              select(*(_cast(p, _EVENTS.c[k].type)
                                       for k, p in _EVENT_ROW.items())).select_from(go))
                 .on_conflict_do_nothing(index_elements=["partner_id", "idempotency_key"])
                 .returning(_V.id)
                 .cte("new_event"))
    inserted = exists(select(new_event.c.id))
    enabled = and_(inserted, exists().where(go.c.enabled))
    bumped = reserve_subscribed(_PARTNER_ID, _TYPE, and_(_URL.is_(None), enabled)).cte("bumped")
    by_url = reserve_url(_PARTNER_ID, _URL, bindparam("p_public_id", type_=_E.public_id.type),
                         and_(_URL.is_not(None), enabled)).cte("by_url")
    targets = union_all(select(bumped), select(by_url)).cte("targets")
    t = targets.c
    # The groups of the healthy endpoints whose marks this publish set (wake_groups.py).
    groups = wake_groups.mark_groups(
        select(t.id).where(t.wake_sent_at == _NOW, t.failing_since.is_(None),
                           t.disabled_at.is_(None)),
        _NOW, bindparam("s_stale", type_=_N.created_at.type))

    row = {k: _in_sql(v) for k, v in
           notification_row(_AS_PARTNER, _AS_EVENT, None, _AS_NOW).items()}
    row["id"] = func.gen_random_uuid()
    pending = t.disabled_at.is_(None)
    disabled_because = func.coalesce(func.nullif(t.disabled_reason, constant("")),
                                     constant(DISABLED))
    to_targets = select(*_typed({
        **row, "endpoint_id": t.id, "sequence": t.last_sequence, "url": t.url,
        "latest_error_payload": case(
            (pending, null()), else_=_error(FailureKind.ENDPOINT_DISABLED, disabled_because)),
        **{k: case((pending, _in_sql(v)), else_=row[k])
           for k, v in made_pending(_AS_NOW).items()}})).select_from(targets)
    nowhere = select(*_typed({
        **row, "url": case((go.c.enabled, null()),
                           else_=func.coalesce(_URL, go.c.default_url)),
        "latest_error_payload": case(
            (~go.c.enabled, _not_pushed(go.c)),
            (go.c.registered, _error(FailureKind.NO_URL,
                                     bindparam("p_no_subscriber", type_=String()))),
            else_=_error(FailureKind.NO_URL, constant(NO_URL)))})
    ).select_from(go).where(inserted, ~exists(select(targets)))
    notified = (insert(_NOTIFICATIONS)
                .from_select([c.name for c in _NOTIFICATIONS.c], union_all(to_targets, nowhere))
                .returning(_N.id, _N.status, _N.sequence, _N.endpoint_id)
                .cte("notified"))
    n = notified.c
    # A row per notification, the default endpoint's first; one with no notification if
    # the statement left the publish to ``record_events``; none for an unknown partner.
    return prepared(
        select(n.id, n.status, n.sequence, n.endpoint_id, t.public_id, t.wake_sent_at,
               t.failing_since, groups.c.wake_sent_at.label("group_mark"))
        .select_from(partner.outerjoin(notified, true())
                     .outerjoin(targets, t.id == n.endpoint_id)
                     .outerjoin(groups, groups.c.id == endpoint_group(t.id)))
        .order_by(t.is_default.desc().nulls_last(), t.id))


def publish_alone(settings: Settings, partner_id: str, spec: Mapping[str, Any], *,
                  retry_for: float,
                  only_if: Callable[[OperationalError], bool] | None) -> Published | None:
    """Publish the event ``spec`` in one statement (``record_events`` has the rules),
    run again through transient errors as ``publish`` says; its wake-ups are sent after.
    None when ``record_events`` is to publish it: without wake-ups (SQLite: a message
    per notification, and no such statement), for an event sent to one endpoint by id,
    one it refuses (its order of errors is kept) or one the statement leaves to it."""
    now = utcnow()
    stale = wake.wake_stale(settings, now)
    if stale is None or spec.get("endpoint") is not None:
        return None
    url = spec.get("callback_url") or None
    try:
        if url is not None:
            netguard.validate_url(url, allow_private=settings.allow_private_urls)
        event, body = new_event(partner_id, spec, now)
    except ValidationFailed:
        return None
    params = {f"e_{k}": v for k, v in
              event_row(event, body, spec.get("idempotency_key")).items()}
    params.update(p_url=url, p_public_id=new_endpoint_id(),
                  p_no_subscriber=no_subscriber(event.type), s_now=now, s_wake=True,
                  s_stale=stale)

    def run(connection: Connection) -> Sequence[Row[Any]]:
        return connection.execute(_statement(), params).all()

    rows = autocommitted(run, retry_for=retry_for, only_if=only_if)
    if not rows:
        raise PartnerNotFound()
    if rows[0].id is None:
        return None
    run_after_commit(_wake_ups(rows, now, stale))
    deliveries = tuple(Delivery(row.id, row.status, row.sequence, row.public_id)
                       for row in rows)
    first = deliveries[0]
    return Published(event.id, first.notification_id, first.status, first.sequence,
                     deliveries)


def _wake_ups(rows: Sequence[Row[Any]], now: datetime, stale: datetime
              ) -> list[Callable[[], object]]:
    """The wake-ups a publish sends: a failing endpoint's own, a healthy one's group's,
    each only where this publish set the mark (``delivery/wakeups/wake_groups.py``)."""
    sends: list[Callable[[], object]] = []
    groups: dict[int, tuple[list[int], list[str]]] = {}
    for row in rows:
        if row.status != NotificationStatus.PENDING or not woke(row.wake_sent_at, now, stale):
            continue
        if row.failing_since is not None:
            sends.append(functools.partial(enqueue_wake, row.endpoint_id, [row.id]))
        elif woke(row.group_mark, now, stale):
            endpoints, ids = groups.setdefault(wake_groups.group_of(row.endpoint_id), ([], []))
            endpoints.append(row.endpoint_id)
            ids.append(row.id)
    sends += [functools.partial(enqueue_group_wake, group, endpoints, ids)
              for group, (endpoints, ids) in groups.items()]
    return sends
