"""Group wake-ups: one broker message per group of endpoints with first attempts due,
not one per endpoint (PostgreSQL).

A burst spread over many merchants (a thousand endpoints with a few notifications each)
cost a wake-up message per endpoint, and most found their rows already taken by other
batches (``wake._steal``): a message and a claim each for nothing. Endpoints now share
a wake-up in ``WAKE_GROUPS`` groups, by id. A single publish (``publishing/
one_statement.py``) that sets a healthy endpoint's mark (``partners/endpoints.py``) also
marks the endpoint's group, in the same statement (``mark_groups``), and sends the
group's wake-up (``deliverer.deliver_group``) only when none is pending. The worker that
takes it clears the group's mark, then takes the group's marked endpoints, the
longest-waiting first, as ``wake.claim_due_many`` takes an endpoint's wake-up: a batch
shared among them, their marks cleared and set again where due ones remain, and the
group's mark too, the wake-up passed on after the commit.

Nothing is stranded. The publish that newly marks an endpoint locks the group's row (an
UPDATE, even of a mark already set), so it is ordered against the group's clearing, the
claim's first statement: one that came first had committed before the clearing could
lock the row, so the claim's next statements (READ COMMITTED) see its endpoint; one
that came after waited for the claim's commit and found the group's mark cleared (it
sent a new wake-up) or set again (passed on after that commit). A publish that found its
endpoint's mark already set relies on the endpoint's argument (``wake.py``), with the
claim's lock of the endpoint (``_MARKED``) in the clearing's place: a publish to it
committed before that lock, so the next statement, which clears the mark and reads the
rows, sees what it made; a later one waits for the claim's commit. Publishes lock an
endpoint, then its group, which the claim holds; so the claim takes its endpoints with
SKIP LOCKED, never waiting for one: an endpoint held by another transaction is left
marked, and the group's wake-up passed on to take it.

An endpoint's mark means a wake-up that takes it is pending: its own or its group's.
Publishes by other paths (bulk, by endpoint id, by URL without the one statement) and
failing endpoints keep their own wake-ups (a failing endpoint's POSTs must not hold a
healthy batch's record, as ``wake._steal`` says); a group's claim takes any marked
endpoint of the group that is not failing. A failing one whose mark stands for the
group's wake-up (``endpoints.wake_by_group``: set by the publish or the claim that set
the mark) is handed a wake-up of its own (its mark cleared, so that a publish sends
another rather than trusting one taken); one whose mark stands for its own wake-up is
left to it.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    CTE,
    ColumnElement,
    Select,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from deliverer import outbox
from deliverer.batching import Coalescer
from deliverer.broker import dispatch
from deliverer.config import Settings, get_settings
from deliverer.db import in_transaction, is_transient_abort
from deliverer.delivery import together
from deliverer.delivery.batch import BatchClaim, BatchOutcome, deliver_claimed
from deliverer.delivery.wakeups import wake
from deliverer.models import WAKE_GROUPS, Endpoint, WakeGroup, endpoint_group, table_of, utcnow
from deliverer.models.in_list import in_list
from deliverer.prepared import prepared

_GROUPS = table_of(WakeGroup)
_G = _GROUPS.c
_E = table_of(Endpoint).c
GROUP = endpoint_group(_E.id)
_NOW = bindparam("now", type_=_G.wake_sent_at.type)

# The groups' rows locked in id order, as publishes lock them (``mark_groups``).
_LOCKED = (select(_G.id).where(in_list(_G.id, "groups")).order_by(_G.id)
           .with_for_update())
_CLEAR = prepared(update(_GROUPS).where(_G.id.in_(_LOCKED.scalar_subquery()))
                  .values(wake_sent_at=None))
_SET = prepared(update(_GROUPS).where(in_list(_G.id, "groups")).values(wake_sent_at=_NOW))
_MARKED_IN = (in_list(GROUP, "groups"), _E.wake_sent_at.is_not(None))
# The groups' marked endpoints, the longest-waiting first (ix_endpoints_wake_group),
# those another transaction holds skipped: a publish locks an endpoint, then its group,
# which the claim holds. Whether it is failing, and whether its mark stands for the
# group's wake-up (set by a publish to it when healthy, or by a group's claim).
_LOCKED_MARKED = (select(_E.id, GROUP.label("grp"),
                         _E.failing_since.is_not(None).label("failing"),
                         _E.wake_by_group, _E.wake_sent_at)
                  .where(*_MARKED_IN).with_for_update(key_share=True, skip_locked=True)
                  .cte("marked"))
# How many each group has marked, locked or not, in the same snapshot: more than were
# taken means some were skipped. Each group once, with its endpoints taken (none: NULLs).
_COUNTED = (select(GROUP.label("grp"), func.count().label("marked")).where(*_MARKED_IN)
            .group_by(GROUP).cte("counted"))
_MARKED = prepared(select(_COUNTED.c.grp, _COUNTED.c.marked, _LOCKED_MARKED.c.id,
                           _LOCKED_MARKED.c.failing, _LOCKED_MARKED.c.wake_by_group)
                    .select_from(_COUNTED.outerjoin(_LOCKED_MARKED,
                                                    _LOCKED_MARKED.c.grp == _COUNTED.c.grp))
                    .order_by(_LOCKED_MARKED.c.wake_sent_at, _LOCKED_MARKED.c.id))


def group_of(endpoint_id: int) -> int:
    return endpoint_id % WAKE_GROUPS


def mark_groups(woken: Select[tuple[int]], now: ColumnElement[datetime],
                stale: ColumnElement[datetime]) -> CTE:
    """A CTE of a publish's statement: the groups of the endpoints ``woken`` selects
    (ids of the healthy endpoints whose marks it newly set), each marked ``now`` unless a
    wake-up sent since ``stale`` is pending; created on first use. Every such group row
    is locked, marked or not (see the module's docstring). Returns ``id`` and
    ``wake_sent_at``: a publish that finds it equal to its ``now`` sends the wake-up."""
    groups = woken.subquery("woken_endpoints")
    new = (select(endpoint_group(groups.c[0]).label("id"), now.label("at"))
           .distinct().order_by("id"))  # one order of locks for every publish
    return (pg_insert(_GROUPS).from_select(["id", "wake_sent_at"], new)
            .on_conflict_do_update(index_elements=["id"], set_={"wake_sent_at": case(
                (or_(_G.wake_sent_at.is_(None), _G.wake_sent_at < stale), now),
                else_=_G.wake_sent_at)})
            .returning(_G.id, _G.wake_sent_at).cte("woken_groups"))


def claim_groups(session: Session, group_ids: Sequence[int], settings: Settings
                 ) -> tuple[dict[int, tuple[BatchClaim, bool]], list[int]]:
    """Take the groups' wake-ups: clear their marks, then share a batch among each
    group's marked endpoints (at most a batch of endpoints, the longest-waiting first,
    each taking an equal share). Returns, per group, its claim and whether due ones
    remain, or marked endpoints were skipped (then its mark is set again, and the caller
    passes its wake-up on after the commit); and the failing endpoints to hand a wake-up
    of their own, their marks cleared. Commits nothing."""
    groups = sorted(set(group_ids))
    batch_size = max(1, settings.delivery_batch_size)
    connection = session.connection()
    connection.execute(_CLEAR, {"groups": groups})  # first: see the module's docstring
    members: dict[int, list[int]] = {group: [] for group in groups}
    more: set[int] = set()
    handed: list[int] = []
    seen: Counter[int] = Counter()
    counted: dict[int, int] = {}
    for group, marked, endpoint_id, failing, woke_group in connection.execute(
            _MARKED, {"groups": groups}):
        counted[group] = marked
        if endpoint_id is None:
            continue  # every marked endpoint of the group held by another transaction
        seen[group] += 1
        if failing:
            if woke_group:
                handed.append(endpoint_id)
        elif len(members[group]) < batch_size:
            members[group].append(endpoint_id)
        else:
            more.add(group)  # left marked for the next claim
    # Held by another transaction: skipped, left marked for the next claim.
    more.update(group for group, marked in counted.items() if marked > seen[group])
    if handed:
        connection.execute(wake.CLEAR_HELD_MARKS, {"ids": sorted(handed)})
    limits = {endpoint_id: max(1, batch_size // len(ids))
              for ids in members.values() for endpoint_id in ids}
    claims = (wake.claim_due_many(session, list(limits), settings, limits, by_group=True)
              if limits else {})
    out: dict[int, tuple[BatchClaim, bool]] = {}
    for group, ids in members.items():
        merged = BatchClaim(token=claims[ids[0]][0].token if ids else "")
        for endpoint_id in ids:
            claim = claims[endpoint_id][0]
            merged.jobs += claim.jobs
            merged.not_due += claim.not_due
            merged.locked += claim.locked
        remain = group in more or any(claims[i][1] for i in ids)
        out[group] = (merged, remain)
    again = sorted(group for group, (_claim, remain) in out.items() if remain)
    if again:
        connection.execute(_SET, {"groups": again, "now": utcnow()})
    return out, handed


def _claim_together(group_ids: Sequence[int]) -> list[tuple[BatchClaim, bool]]:
    settings = get_settings()
    groups = sorted(set(group_ids))
    try:
        claims, handed = in_transaction(
            lambda session: claim_groups(session, groups, settings),
            retry_for=settings.lease_seconds / 4, only_if=is_transient_abort)
    except Exception:
        # Its rollback undid the clearings: the marks would say a wake-up is pending
        # while these were taken, and publishes would send none for WAKE_TTL. Cleared on
        # their own, at best (the database may be what failed): the next publish wakes.
        with contextlib.suppress(Exception):
            outbox.to_sweep([], (), groups)
        raise
    for endpoint_id in handed:
        dispatch.enqueue_wake(endpoint_id)
    seen: set[int] = set()
    out = []
    for group in group_ids:  # a wake-up taken twice at once: the second is empty
        out.append(claims[group] if group not in seen else (BatchClaim(token=""), False))
        seen.add(group)
    return out


_CLAIMS: Coalescer[int, tuple[BatchClaim, bool]] = Coalescer(
    "wake-group", _claim_together, together.MAX_BATCH, together.RUNNERS)


def deliver_group(group_id: int, settings: Settings) -> BatchOutcome:
    """Take a group's wake-up: claim its endpoints' due first attempts, pass the wake-up
    on if more remain, then send and record the batch."""
    leased_at = time.monotonic()  # no later than the lease's start: the cutoff errs early
    claim, more = _CLAIMS.submit(group_id)
    if more:
        dispatch.enqueue_group_wake(group_id)
    return deliver_claimed(claim, leased_at, settings, record=together.record_all)
