"""Manual retries (seed 000), decided for several requests in one transaction.

A merchant's retry is cheap to decide and expensive to commit: a transaction costs more
than the rules it enforces. Requests that arrive together are therefore decided together
(``deliverer.batching`` hands the API's concurrent retry requests to one call of
``run_batch``); a lone request is a batch of one, decided the same way.

Whatever the batch size, one transaction runs the same few statements: lock the
partners (``run_batch``: in the statement that looks up the API keys), lock the
notifications and count their partners' accepted retries of the last minute (one
statement), write the audit rows and update the notifications (one statement on
PostgreSQL), commit. On PostgreSQL the statements are prepared once per connection
(``deliverer.prepared``; their SQL is the same whatever the batch's size,
``models.in_list``; they are ``retry_statements.py``'s): parsing and planning them was a
quarter of the server's CPU.
The requests are judged one by one in arrival order against what the earlier ones of
the batch changed, so two requests for one notification in one batch accept the first,
and a partner's tenth retry of the minute is its last, whichever batches the requests
fell into.

The limits hold across batches and processes as they did for single requests: the
partners' rows are locked before the counts are read (PostgreSQL: FOR NO KEY UPDATE, in
the order of the partner ids, so two batches never wait for each other in a cycle;
SQLite serialises every write transaction, BEGIN IMMEDIATE), and the counts are read by
a later statement, whose READ COMMITTED snapshot sees every retry that the previous
holder of a lock committed.

A batch never waits for a notification's row while it holds another's: a worker
recording an attempt holds its notification and may update others of its endpoint
(``endpoint_queue``) in no particular order, and the two would deadlock. So a batch of
several notifications skips the rows that are locked (SKIP LOCKED), and their requests
are decided right after, each alone, in a transaction that waits for that one row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer import outbox
from deliverer.broker.dispatch import enqueue_batch
from deliverer.config import Settings
from deliverer.db import in_transaction, on_commit
from deliverer.errors import DelivererError, NotificationNotFound, Refusal
from deliverer.models import (
    Endpoint,
    Lane,
    RequestKind,
    utcnow,
)
from deliverer.models.in_list import pairs_bound
from deliverer.notifications.audit import (
    ACCEPTED,
    RATE_WINDOW,
    enforce_rate,
)
from deliverer.notifications.cycle import (
    DECIDING_NAMES,
    check_deliverable,
    check_retryable,
    fresh_cycle_values,
    moves_on_retry,
    repoint,
)
from deliverer.notifications.queries import is_uuid
from deliverer.notifications.retry_statements import (
    ACCEPT,
    ACCEPT_AUDITED,
    AUDIT,
    AUDITED,
    EXISTING,
    LOCK_FREE,
    LOCK_ONE,
    LOCK_PARTNERS,
)
from deliverer.partners.service import Principal, principals_for


class Busy:
    """A request whose notification a batch found locked by someone else."""


BUSY = Busy()


@dataclass(frozen=True)
class RetryRequest:
    principal: Principal
    notification_id: str


# A retried notification as the retry left it: its columns, with its event's ``type`` and
# ``reference`` (what the response shows), read by the batch's lock statement.
Retried = Mapping[str, Any]

# How long a batch the database aborted is run again before its requests get a 503.
RUN_AGAIN_FOR = 2.0


def manual_retry(session: Session, settings: Settings, principal: Principal,
                 notification_id: str, now: datetime | None = None) -> Retried:
    """One request: a batch of one. A refusal, already on the audit trail of this
    transaction, is raised carrying it (``Refusal``): an owner that rolls the request
    back writes it again (``DelivererError.keep_refusal``)."""
    [outcome] = manual_retries(session, settings,
                               [RetryRequest(principal, notification_id)], now)
    assert not isinstance(outcome, Busy)  # one notification: its row is waited for
    if isinstance(outcome, DelivererError):
        outcome.refusal = Refusal(principal.partner_id, principal.api_key_id,
                                  RequestKind.RETRY, notification_id=notification_id
                                  if is_uuid(notification_id) else None,
                                  source=principal.source)
        raise outcome
    return outcome


def manual_retries(session: Session, settings: Settings, requests: Sequence[RetryRequest],
                   now: datetime | None = None, *, partners_locked: bool = False
                   ) -> list[Retried | DelivererError | Busy]:
    """Decide ``requests`` in order, in the session's transaction; the accepted ones are
    enqueued (one message) once it commits. Returns, per request, the retried
    notification, the error to answer with, or ``BUSY``: its notification's row was
    locked (several notifications are never waited for, see the module's docstring) and
    the request is to be decided alone, after this transaction. Every decision is
    written to the audit trail. ``partners_locked``: the transaction holds the
    requests' partners' locks already (``principals_for(..., lock_partners=True)``)."""
    now = now or utcnow()
    conn = session.connection()
    pairs = sorted({(r.notification_id, r.principal.partner_id) for r in requests
                    if is_uuid(r.notification_id)})
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    rates: dict[str, tuple[int, datetime | None]] = {}
    deciding: dict[str, dict[str, Any]] = {}
    busy: set[tuple[str, str]] = set()
    if pairs:
        partner_ids = sorted({pid for _, pid in pairs})
        if not partners_locked:
            conn.execute(LOCK_PARTNERS, {"partner_ids": partner_ids})
        one_row = len({nid for nid, _ in pairs}) == 1
        for locked in conn.execute(LOCK_ONE if one_row else LOCK_FREE,
                                   {**pairs_bound("pairs", pairs),
                                    "partner_ids": partner_ids,
                                    "since": now - RATE_WINDOW}):
            found = dict(locked._mapping)
            rates[locked.partner_id] = (found.pop("rate_retries") or 0,
                                        found.pop("rate_oldest"))
            # Popped: the response shows the notification.
            deciding[locked.id] = {k: found.pop(k) for k in DECIDING_NAMES}
            rows[(locked.id, locked.partner_id)] = found
        missing = [pair for pair in pairs if pair not in rows]
        if missing and not one_row:
            busy = {(nid, pid) for nid, pid in conn.execute(
                EXISTING, pairs_bound("pairs", missing))}

    fresh = fresh_cycle_values(now, due=now)
    outcomes: list[Retried | DelivererError | Busy] = []
    audit: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    for request in requests:
        partner_id = request.principal.partner_id
        if (request.notification_id, partner_id) in busy:
            outcomes.append(BUSY)
            continue
        row = rows.get((request.notification_id, partner_id))
        try:
            if row is None:
                raise NotificationNotFound()
            check_retryable(row["status"], row["manual_retry_count"], settings)
            facts = deciding[row["id"]]
            moves = moves_on_retry(url=row["url"], callback_url=row["callback_url"],
                                   current_url=row["current_url"],
                                   endpoint_keeps=bool(facts["endpoint_keeps"]))
            check_deliverable(session, facts, moves_to=(
                (partner_id, row["current_url"]) if moves else None))
            count, oldest = rates.get(partner_id, (0, None))
            enforce_rate(count, oldest, settings.manual_retry_rate_per_minute, now)
        except DelivererError as error:
            outcomes.append(error)
            audit.append(_audit_row(request, error.code, now))
            continue
        rates[partner_id] = (count + 1, oldest or now)
        row.update(fresh, **outbox.handed_over(now, now),
                   manual_retry_count=row["manual_retry_count"] + 1)
        if moves:
            moved = repoint(session, notification_id=row["id"], partner_id=row["partner_id"],
                            endpoint_id=row["endpoint_id"], current_url=row["current_url"],
                            now=now)
            row.update(url=moved[0], endpoint_id=moved[1], sequence=moved[2],
                       endpoint_public_id=session.scalar(
                           select(Endpoint.public_id).where(Endpoint.id == moved[1])))
        accepted.append(row)
        audit.append(_audit_row(request, ACCEPTED, now))
        outcomes.append(row)

    if not accepted:
        if audit:
            conn.execute(AUDIT, audit)
        return outcomes
    ids = [row["id"] for row in accepted]
    values = {"ids": ids, **{f"v_{k}": v for k, v in fresh.items()}, "v_now": now}
    if conn.dialect.name == "postgresql":
        conn.execute(ACCEPT_AUDITED, {**values, **{
            f"a_{k}": [row[k] for row in audit] for k in AUDITED}})
    else:
        conn.execute(AUDIT, audit)
        conn.execute(ACCEPT, values)
    on_commit(session, lambda: enqueue_batch(ids, Lane.MANUAL))
    return outcomes


def _audit_row(request: RetryRequest, outcome: str, now: datetime) -> dict[str, Any]:
    nid = request.notification_id
    return {"partner_id": request.principal.partner_id,
            "api_key_id": request.principal.api_key_id, "kind": RequestKind.RETRY,
            "outcome": outcome, "notification_id": nid if is_uuid(nid) else None,
            "source": request.principal.source, "reference": None, "delivery_status": None,
            "created_at": now}


def run_batch(settings: Settings, requests: Sequence[tuple[str, str]]
              ) -> list[Retried | DelivererError]:
    """(API key hash, notification id) requests: authenticated and decided together in
    a transaction of their own, run again whole if the database aborts it (a deadlock
    victim, a connection lost in a restart). Requests whose notification was locked are
    then decided one by one, each in a transaction of its own."""
    def work(session: Session) -> list[Retried | DelivererError | RetryRequest]:
        # The key lookup locks the keys' partners: the batch's first statement.
        principals = principals_for(session, [key for key, _ in requests],
                                    lock_partners=True)
        asked = [RetryRequest(p, nid) for p, (_, nid) in zip(principals, requests, strict=True)
                 if isinstance(p, Principal)]
        decided = iter(zip(asked, manual_retries(session, settings, asked,
                                                 partners_locked=True), strict=True))
        # A busy request is handed back as itself, to be decided alone below.
        outcomes: list[Retried | DelivererError | RetryRequest] = []
        for principal in principals:
            if isinstance(principal, DelivererError):
                outcomes.append(principal)
                continue
            request, outcome = next(decided)
            outcomes.append(request if isinstance(outcome, Busy) else outcome)
        return outcomes

    outcomes = in_transaction(work, retry_for=RUN_AGAIN_FOR)
    return [_alone(settings, o) if isinstance(o, RetryRequest) else o for o in outcomes]


def _alone(settings: Settings, request: RetryRequest) -> Retried | DelivererError:
    def work(session: Session) -> Retried | DelivererError | Busy:
        [outcome] = manual_retries(session, settings, [request])
        return outcome

    outcome = in_transaction(work, retry_for=RUN_AGAIN_FOR)
    assert not isinstance(outcome, Busy)  # one notification: its row is waited for
    return outcome
