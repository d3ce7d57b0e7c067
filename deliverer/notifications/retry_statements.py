"""The statements a batch of manual retries runs (``manual_retry.manual_retries``): lock
the partners, lock the notifications with their partners' rates, write the audit rows
and accept.

Built once, with bind parameters: building them per request cost more CPU than running
them (SQLAlchemy's compiled cache spares only the compilation). Their SQL is the same
whatever the batch's size (``models.in_list``), so PostgreSQL prepares them once per
connection (``deliverer.prepared``).
"""

from __future__ import annotations

from sqlalchemy import bindparam, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql

from deliverer import outbox
from deliverer.models import (
    Endpoint,
    Event,
    Notification,
    Partner,
    PartnerRequest,
    RequestKind,
    WebhookSettings,
    table_of,
    utcnow,
)
from deliverer.models.base import constant
from deliverer.models.in_list import in_list, pairs_in_list
from deliverer.notifications.audit import ACCEPTED
from deliverer.notifications.cycle import DECIDING, fresh_cycle_values
from deliverer.prepared import prepared

_NOTIFICATIONS = table_of(Notification)
_REQUESTS = table_of(PartnerRequest)

# Only the requesting partner's own notifications: another partner's id locks nothing and
# is answered 404 (no existence leak).
_OWN = pairs_in_list(Notification.id, Notification.partner_id, "pairs")
LOCK_PARTNERS = (
    select(Partner.id)
    .where(in_list(Partner.id, "partner_ids"))
    # In this order (PostgreSQL locks the sorted rows): batches of overlapping partners
    # queue instead of deadlocking. FOR NO KEY UPDATE, not FOR UPDATE: see
    # audit.lock_partner.
    .order_by(Partner.id)
    .with_for_update(key_share=True)
)
# Each partner's accepted retries within the window: how many, and the oldest's time.
_RATES = (
    select(PartnerRequest.partner_id, func.count().label("retries"),
           func.min(PartnerRequest.created_at).label("oldest"))
    .where(in_list(PartnerRequest.partner_id, "partner_ids"),
           PartnerRequest.kind == constant(RequestKind.RETRY),
           PartnerRequest.outcome == constant(ACCEPTED),
           PartnerRequest.created_at > bindparam("since"))
    .group_by(PartnerRequest.partner_id)
    .cte("rates")
)
# The notifications with their partners' rates, in one statement (one round trip less):
# its snapshot is taken after the partners' locks are held, so the counts see every
# retry their previous holders committed; a wait for a notification's row within it
# leaves them right, as nobody else adds accepted retries of a partner locked here.
_ROWS = (
    select(_NOTIFICATIONS, Event.type, Event.reference, Event.callback_url,
           WebhookSettings.url.label("current_url"),
           Endpoint.public_id.label("endpoint_public_id"),
           _RATES.c.retries.label("rate_retries"), _RATES.c.oldest.label("rate_oldest"),
           *DECIDING)
    .join(Event, Event.id == Notification.event_id)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == Notification.partner_id)
    .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
    .outerjoin(_RATES, _RATES.c.partner_id == Notification.partner_id)
    .where(_OWN)
)
# Prepared (``deliverer.prepared``) where the transaction runs again
# (``manual_retry.run_batch``).
LOCK_ONE = prepared(_ROWS.with_for_update(key_share=True, of=Notification.id))
LOCK_FREE = prepared(_ROWS.with_for_update(key_share=True, skip_locked=True,
                                           of=Notification.id))
EXISTING = select(Notification.id, Notification.partner_id).where(_OWN)
AUDIT = insert(_REQUESTS)
ACCEPT = (
    update(_NOTIFICATIONS)
    .where(in_list(_NOTIFICATIONS.c.id, "ids"))
    .values({**{k: bindparam(f"v_{k}") for k in fresh_cycle_values(utcnow(), due=utcnow())},
             "manual_retry_count": _NOTIFICATIONS.c.manual_retry_count + 1,
             **outbox.handed_over(bindparam("v_now"), bindparam("v_now"))})
)
# PostgreSQL: the audit rows written by the update's statement (a data-modifying WITH,
# one round trip less), from an array per column that varies between the audit rows
# (``manual_retry._audit_row``: kind and created_at are the same in all, the other
# columns NULL); SQLite has no INSERT in a WITH and runs AUDIT then ACCEPT.
AUDITED = ("partner_id", "api_key_id", "outcome", "notification_id", "source")
ACCEPT_AUDITED = prepared(ACCEPT.add_cte(insert(_REQUESTS).from_select(
    [*AUDITED, "kind", "created_at"],
    select(*(func.unnest(bindparam(f"a_{k}", type_=postgresql.ARRAY(_REQUESTS.c[k].type)))
             for k in AUDITED),
           literal(RequestKind.RETRY, _REQUESTS.c.kind.type),
           bindparam("v_now", type_=_REQUESTS.c.created_at.type)),
).cte("audit")))
