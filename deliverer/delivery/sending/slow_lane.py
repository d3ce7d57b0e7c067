"""The slow lane: an endpoint that hangs may not take every worker thread.

A POST to an endpoint that hangs holds a worker thread until the total timeout. When
such endpoints receive webhooks faster than their sends time out, they would soon hold
every thread of every worker, and healthy merchants' webhooks would wait behind them.

So each worker process counts its sends in flight per endpoint. An endpoint is *slow*
while one of its sends has been in flight for ``slow_send_seconds`` or more, and for
``slow_window`` seconds after a send to it took that long or timed out. A slow endpoint
gets at most ``slow_endpoint_concurrency`` sends in flight in this process; a delivery
beyond that is *deferred*: no request is made, so no attempt is recorded; its lease is
released and its next attempt moved a timeout or two later, when the beat sweep hands
it over again (the outbox path, so nothing is lost if the worker dies). In a batch, the
jobs beyond the cap first wait their turn in the runs of those admitted
(``runs.perform_many``): an endpoint that was slow once and answers fast again is
capped, not deferred. In a run, a slow answer or a timeout defers the jobs after it,
admitted or waiting, and a waiting job is admitted only while its run has lasted less
than ``slow_send_seconds``. Tickets are handed out a batch at a time; ``may_start``
holds the cap for the POSTs themselves. Endpoints never slow are never refused here;
``runs.perform_many`` caps their parallelism, and gives an endpoint no more runs than a
slow one until it has answered fast lately (``trusted``): before its first answer,
nothing tells a healthy endpoint from one that hangs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from deliverer import metrics, outbox
from deliverer.config import Settings
from deliverer.db import on_commit
from deliverer.delivery.sending.sender import SendResult
from deliverer.delivery.troubleshooting import FailureKind
from deliverer.delivery.unsent import given_back
from deliverer.delivery.voided import ours
from deliverer.models import Notification, utcnow

log = logging.getLogger(__name__)

Key = object  # the endpoint at its URL (``key_for``), or the URL without an endpoint row


@dataclass(frozen=True)
class Ticket:
    key: Key
    number: int


class EndpointGate:
    """Per-process admission of sends, by endpoint. Thread-safe."""

    MAX_TRACKED = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        # key -> {ticket number: when its POST started, or None while it waits its turn}
        # of the sends admitted and not yet done.
        self._in_flight: dict[Key, dict[int, float | None]] = {}
        self._slow_until: dict[Key, float] = {}
        # Endpoints that answered fast within slow_window: a batch for them may open all
        # its runs at once (``trusted``).
        self._fast_until: dict[Key, float] = {}

    def admit(self, key: Key, settings: Settings) -> Ticket | None:
        """A ticket to send, or None: the endpoint is slow and at its cap here.

        The ticket counts towards the cap at once; its send is timed from ``started``,
        not from here: a batch's jobs wait their turn behind the endpoint's earlier POSTs,
        and that wait says nothing of how the endpoint answers.
        """
        now = self._clock()
        with self._lock:
            flying = self._in_flight.setdefault(key, {})
            if len(flying) >= settings.slow_endpoint_concurrency and self._is_slow(
                    key, flying, now, settings):
                return None
            number = next(self._numbers)
            flying[number] = None
            return Ticket(key, number)

    def started(self, ticket: Ticket) -> None:
        """The ticket's POST starts now."""
        with self._lock:
            flying = self._in_flight.get(ticket.key)
            if flying is not None and ticket.number in flying:
                # Moved to the end, so the started sends stay in the order they started.
                del flying[ticket.number]
                flying[ticket.number] = self._clock()

    def may_start(self, ticket: Ticket, settings: Settings) -> bool:
        """Whether the ticket's POST may start now: not when the endpoint is slow and
        already has ``slow_endpoint_concurrency`` POSTs started in this process. Tickets
        are handed out a batch at a time, before anything tells that the endpoint hangs;
        this holds the cap for the POSTs themselves, whichever batch they belong to."""
        now = self._clock()
        with self._lock:
            flying = self._in_flight.get(ticket.key, {})
            if not self._is_slow(ticket.key, flying, now, settings):
                return True  # the common case: no count of the POSTs in flight
            started = sum(1 for t in flying.values() if t is not None)
            return started < settings.slow_endpoint_concurrency

    def in_flight(self, key: Key) -> int:
        """Tickets handed out for the endpoint and not yet done (started or not)."""
        with self._lock:
            return len(self._in_flight.get(key, {}))

    def done(self, ticket: Ticket, result: SendResult | None, settings: Settings) -> None:
        """The send is over; a slow one (or a timeout) marks the endpoint slow a while, a
        fast answer (``answered_fast``) trusted a while. A ticket whose POST never started
        (a batch's job past its lease cutoff, or deferred) is forgotten, judging
        nothing."""
        now = self._clock()
        with self._lock:
            flying = self._in_flight.get(ticket.key, {})
            started = flying.pop(ticket.number, None)
            if not flying:
                self._in_flight.pop(ticket.key, None)
            if started is None:
                started = now  # never started: nothing to judge the endpoint by
            if _timed_out(result) or now - started >= settings.slow_send_seconds:
                self._mark(self._slow_until, ticket.key, now + settings.slow_window, now)
            elif result is not None and answered_fast(result, settings):
                self._mark(self._fast_until, ticket.key, now + settings.slow_window, now)

    def is_slow(self, key: Key, settings: Settings) -> bool:
        with self._lock:
            return self._is_slow(key, self._in_flight.get(key, {}), self._clock(), settings)

    def trusted(self, key: Key, settings: Settings) -> bool:
        """Answered fast within ``slow_window`` and not slow now. An endpoint this process
        has not heard from lately is not: it may be the one that hangs."""
        now = self._clock()
        with self._lock:
            return (self._fast_until.get(key, 0.0) > now
                    and not self._is_slow(key, self._in_flight.get(key, {}), now, settings))

    def reset(self) -> None:
        """Forget every endpoint (tests: endpoint ids can be reused after a cleanup)."""
        with self._lock:
            self._in_flight.clear()
            self._slow_until.clear()
            self._fast_until.clear()

    def _is_slow(self, key: Key, flying: dict[int, float | None], now: float,
                 settings: Settings) -> bool:
        if self._slow_until.get(key, 0.0) > now:
            return True
        # Started tickets are moved to the end as they start (under the lock), so the first
        # started one is the oldest send in flight.
        oldest = next((t for t in flying.values() if t is not None), now)
        return now - oldest >= settings.slow_send_seconds

    def _mark(self, marks: dict[Key, float], key: Key, until: float, now: float) -> None:
        """Bounded: past MAX_TRACKED endpoints, the expired marks go, then the least
        recently set (with that many endpoints marked at once, some are forgotten: a
        forgotten fast one gets fewer runs, a forgotten slow one is timed again)."""
        marks.pop(key, None)  # re-inserted last: the dict's order is the marks' age
        if len(marks) >= self.MAX_TRACKED:
            for old in [k for k, t in marks.items() if t <= now]:
                del marks[old]
            while len(marks) >= self.MAX_TRACKED:
                del marks[next(iter(marks))]
        marks[key] = until


GATE = EndpointGate()


def _timed_out(result: SendResult | None) -> bool:
    return result is not None and (result.error or {}).get("kind") == str(FailureKind.TIMEOUT)


def answered_fast(result: SendResult, settings: Settings) -> bool:
    """The send neither timed out nor took ``slow_send_seconds``: the endpoint answers."""
    return not _timed_out(result) and result.duration_ms < settings.slow_send_seconds * 1000


def key_for(endpoint_id: int | None, url: str) -> Key:
    """Slowness is the server's at a URL: an endpoint moved to another URL starts afresh
    there (its deliveries to the new URL were deferred for 15-30 s, as long as the old
    one's slow window and sends in flight lasted: a black-box try)."""
    return url if endpoint_id is None else (endpoint_id, url)


def defer_until(settings: Settings, now: datetime | None = None) -> datetime:
    """When a deferred delivery is tried again: once its endpoint's sends in flight have
    had time to finish or time out, spread so the deferred do not come back together."""
    now = now or utcnow()
    return now + timedelta(seconds=settings.total_timeout * random.uniform(1.0, 2.0))


def defer(session: Session, ids: Sequence[str], lease_token: str, settings: Settings,
          now: datetime | None = None, *, lease_expires_at: datetime | None = None
          ) -> datetime:
    """Give the leases back (``lease_expires_at``: theirs, if a fresh cycle voided them)
    and move the next attempt later. Commits nothing."""
    until = defer_until(settings, now)
    session.execute(
        update(Notification)
        .where(Notification.id.in_(ids), ours(lease_token, lease_expires_at))
        .values(given_back(until, outbox.LEFT_TO_SWEEP))
        .execution_options(synchronize_session=False)
    )
    # Counted once committed: a transaction run again (a deadlock) would count twice.
    on_commit(session, functools.partial(metrics.observe_deferred, len(ids)))
    for notification_id in ids:
        log.info("deferred: endpoint is slow (at its cap in this worker, or answering "
                 "slowly)",
                 extra={"notification_id": notification_id})
    return until
