"""Per-endpoint rate limits (``Endpoint.rate_limit``, deliveries per second).

Applied at the claim, to rows just leased: a delivery above the limit waits. No request
is made, so no attempt is recorded and ``attempt_count`` stays as it was; the lease is
given back and the next attempt moved to a later slot. A slot within the sweep horizon is
marked scheduled, as the task that claimed the row enqueues it again with that ETA (a
NOT_DUE claim); a later one is left to the beat sweep.

The limit is a GCRA (a leaky bucket kept as one time per endpoint, ``next_send_at``):
a send is allowed when that time is at most ``tolerance`` ahead of now, and each send
moves it ``1 / rate`` further. The tolerance absorbs the broker's and the claim's jitter
(a row back at its slot a few milliseconds early is not sent back again); it allows a
burst of at most 1 + rate x tolerance sends. Only sends take slots there: a waiting row
that took one would find it taken again by itself when it came back. So that waiting
rows do not all come back at the same slot, each worker process hands them successive
slots after the last it handed out (``_Tails``); rows of two processes that meet at one
slot are told apart by ``next_send_at``, and one of them waits again.

The endpoint row is taken with ``FOR NO KEY UPDATE SKIP LOCKED``: the claim never waits
for an endpoint lock (a failure being recorded holds it while it holds later rows of the
endpoint, which this claim may hold: waiting would deadlock). Rows of an endpoint locked
at that moment wait a slot. Endpoints without a limit cost nothing here: ``lease_jobs``
calls ``pace`` only when one of its rows has a limit.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from deliverer import metrics, outbox
from deliverer.config import Settings
from deliverer.db import on_commit
from deliverer.delivery.unsent import given_back
from deliverer.models import Endpoint, Notification, table_of

# At most this long (and at least MIN_TOLERANCE) ahead of now may the next slot be for
# a send to go: one slot, for rates above one per second.
MAX_TOLERANCE = 1.0
MIN_TOLERANCE = 0.05

_ENDPOINTS = table_of(Endpoint)
_NOTIFICATIONS = table_of(Notification)
_SLOTS = (
    select(_ENDPOINTS.c.id, _ENDPOINTS.c.next_send_at)
    .where(_ENDPOINTS.c.id.in_(bindparam("endpoint_ids", expanding=True)))
    .order_by(_ENDPOINTS.c.id)
    .with_for_update(key_share=True, skip_locked=True)
)
_MOVE_SLOT = (
    update(_ENDPOINTS).where(_ENDPOINTS.c.id == bindparam("endpoint_id"))
    .values(next_send_at=bindparam("slot"))
)
_WAIT = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == bindparam("notification_id"),
           _NOTIFICATIONS.c.lease_token == bindparam("token"))
    .values(given_back(bindparam("due"), {"scheduled_for": bindparam("scheduled_for"),
                                          "enqueued_at": bindparam("enqueued_at")}))
)


@dataclass(frozen=True)
class Paced:
    notification_id: str
    endpoint_id: int
    rate_limit: float


class _Tails:
    """The last slot this process handed a waiting row, per endpoint. Thread-safe."""

    MAX_TRACKED = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[int, datetime] = {}

    def take(self, endpoint_id: int, earliest: datetime, step: timedelta) -> datetime:
        with self._lock:
            last = self._last.get(endpoint_id)
            slot = earliest if last is None else max(earliest, last + step)
            if len(self._last) >= self.MAX_TRACKED:
                self._last.clear()  # bounded; forgetting only bunches waiting rows up
            self._last[endpoint_id] = slot
            return slot

    def reset(self) -> None:
        """Forget every endpoint (tests: endpoint ids can be reused after a cleanup)."""
        with self._lock:
            self._last.clear()


TAILS = _Tails()


def tolerance(rate: float) -> float:
    return min(MAX_TOLERANCE, max(MIN_TOLERANCE, 1.0 / rate))


def pace(session: Session, rows: Sequence[Paced], token: str, settings: Settings,
         now: datetime) -> set[str]:
    """Take each endpoint's slots for the rows that may be sent now; give the others'
    leases back, due at later slots. Returns the ids of those that wait. Commits
    nothing."""
    by_endpoint: dict[int, list[Paced]] = {}
    for row in rows:
        by_endpoint.setdefault(row.endpoint_id, []).append(row)
    connection = session.connection()
    free = dict(connection.execute(_SLOTS, {"endpoint_ids": sorted(by_endpoint)}).all())
    moved: list[dict[str, object]] = []
    waiting: list[dict[str, object]] = []
    for endpoint_id, paced in by_endpoint.items():
        # The API refuses limits under 0.001/s; one written by hand must not overflow
        # the date arithmetic and fail every claim it shares a batch with.
        rate = max(paced[0].rate_limit, 0.001)
        step = timedelta(seconds=1.0 / rate)
        ahead = timedelta(seconds=tolerance(rate))
        locked = endpoint_id not in free
        start = now + ahead + step if locked else max(free[endpoint_id] or now, now)
        cursor, sent = start, 0
        for row in paced:
            if not locked and cursor <= now + ahead:
                sent += 1
                cursor += step
                continue
            due = max(now, TAILS.take(endpoint_id, cursor, step) - ahead)
            waiting.append({"notification_id": row.notification_id, "token": token,
                            "due": due, **outbox.marks(settings, due, now)})
        if sent:
            moved.append({"endpoint_id": endpoint_id, "slot": cursor})
    if moved:
        connection.execute(_MOVE_SLOT, moved)
    if waiting:
        connection.execute(_WAIT, waiting)
        # Counted once committed, as slow_lane.defer does.
        on_commit(session, functools.partial(metrics.observe_deferred, len(waiting),
                                             reason="rate_limit"))
    return {str(w["notification_id"]) for w in waiting}
