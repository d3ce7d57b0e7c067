"""The audit trail of merchants' requests, and the limits it enforces (seed 000).

Every retry, resend and ignore a merchant asks for is a ``partner_requests`` row, refused
ones included, with where it came from (``Principal.source``: "portal" for the merchant
portal). Manual retries are limited per notification (3) and per partner (10 a
rolling minute); resends per partner. The limits count the ACCEPTED rows, so they need
no Redis, and they hold under concurrent requests: on PostgreSQL the partner row is
locked for the decision (``lock_partner``; a batch of manual retries locks its partners
in id order, ``manual_retry``); on SQLite every write transaction is serialised (BEGIN
IMMEDIATE).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session

from deliverer.errors import DelivererError, Refusal, TooManyRequests
from deliverer.models import Partner, PartnerRequest, table_of, utcnow
from deliverer.partners.service import Principal

RATE_WINDOW = timedelta(minutes=1)


# ``partner_requests.outcome`` of an accepted request; a refused one has its error code.
ACCEPTED = "ACCEPTED"
OPERATOR = "OPERATOR"  # an operator's action (console, CLI), not a merchant's


# Built once, with bind parameters: building it per request cost more CPU than running it
# (SQLAlchemy's compiled cache spares only the compilation).
_REQUESTS = table_of(PartnerRequest)
_INSERT_REQUEST = insert(_REQUESTS).returning(_REQUESTS.c.id)


def record_request(session: Session, principal: Principal, kind: str, outcome: str, *,
                   notification_id: str | None = None, reference: str | None = None,
                   delivery_status: str | None = None,
                   now: datetime | None = None) -> int:
    """One row of the audit trail (what the rate limits count); returns its id."""
    return int(session.connection().execute(_INSERT_REQUEST, {
        "partner_id": principal.partner_id, "api_key_id": principal.api_key_id,
        "kind": kind, "outcome": outcome, "notification_id": notification_id,
        "source": principal.source, "reference": reference, "delivery_status": delivery_status,
        "created_at": now or utcnow(),
    }).scalar_one())


def reject(session: Session, principal: Principal, kind: str, error: DelivererError, *,
           notification_id: str | None = None, reference: str | None = None) -> NoReturn:
    """Refuse the request, before it changed anything: its audit row goes into the
    session's transaction, and ``error`` is raised carrying it (``Refusal``), so that an
    owner that rolls the failed request back writes it again after the rollback
    (``DelivererError.keep_refusal``): a refusal is on record whoever called."""
    error.refusal = Refusal(principal.partner_id, principal.api_key_id, kind,
                            notification_id=notification_id, reference=reference,
                            source=principal.source)
    error.keep_refusal(session)
    raise error


def lock_partner(session: Session, partner_id: str) -> None:
    """Serialise the limit decisions of one partner (PostgreSQL; SQLite is serial anyway).

    FOR NO KEY UPDATE, not FOR UPDATE: it serialises these decisions just the same but
    does not block the FOR KEY SHARE locks that foreign-key checks take on the partner
    row (a worker inserting an alert while it holds a notification row), which made a
    lock-order deadlock with a retry holding the partner and waiting for that row.
    """
    session.execute(
        select(Partner.id).where(Partner.id == partner_id).with_for_update(key_share=True)
    )


# How many accepted requests of ``:kind`` the partner made since ``:since``, and the
# oldest one's time (for Retry-After).
_RATE = select(func.count(), func.min(PartnerRequest.created_at)).where(
    PartnerRequest.partner_id == bindparam("partner_id"),
    PartnerRequest.kind == bindparam("kind"), PartnerRequest.outcome == ACCEPTED,
    PartnerRequest.created_at > bindparam("since"))
def enforce_rate(count: int, oldest: datetime | None, per_minute: int,
                 now: datetime) -> None:
    if count >= per_minute:
        wait = 1
        if oldest is not None:
            wait = max(1, math.ceil((oldest + RATE_WINDOW - now).total_seconds()))
        raise TooManyRequests(headers={"Retry-After": str(wait)})


def check_rate(session: Session, partner_id: str, kind: str, per_minute: int,
               now: datetime) -> None:
    count, oldest = session.execute(_RATE, {"partner_id": partner_id, "kind": kind,
                                            "since": now - RATE_WINDOW}).one()
    enforce_rate(count, oldest, per_minute, now)
