"""A claimed batch's POSTs: dealt into runs per endpoint on the send pool, admitted by the
slow lane, and cut off before the lease runs out. No database access."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field

from deliverer.config import Settings
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sending import sender, slow_lane
from deliverer.delivery.sending.perform import perform_admitted
from deliverer.logging import delivery_context
from deliverer.stopping import stopping

log = logging.getLogger(__name__)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="deliverer-send")
        return _pool


_endpoint_slots: dict[object, threading.BoundedSemaphore] = {}


def _slot(job: DeliveryJob, limit: int) -> threading.BoundedSemaphore:
    key = slow_lane.key_for(job.endpoint_id, job.url)
    with _pool_lock:
        slot = _endpoint_slots.get(key)
        if slot is None:
            if len(_endpoint_slots) > 10_000:  # bounded: forget idle endpoints
                _endpoint_slots.clear()
            slot = _endpoint_slots[key] = threading.BoundedSemaphore(limit)
        return slot


# Of a lease's time beyond the longest POST, how much is kept for recording the
# outcome (at most: half of it when the lease is short, as in tests).
RECORDING_MARGIN = 5.0


def send_cutoff(leased_at: float, settings: Settings) -> float:
    """The last moment (``time.monotonic``) a POST under a lease taken at ``leased_at`` may
    start: it must end, and be recorded, before the lease runs out. A POST started later
    could still be in flight when the sweep hands the row to another worker, which would
    POST it again."""
    spare = max(0.0, settings.lease_seconds - settings.longest_post)
    keep_for_recording = min(RECORDING_MARGIN, spare / 2)
    return leased_at + settings.lease_seconds - settings.longest_post - keep_for_recording


Admitted = tuple[DeliveryJob, slow_lane.Ticket | None]


def admit_many(jobs: Sequence[DeliveryJob], settings: Settings
               ) -> tuple[list[Admitted], list[DeliveryJob]]:
    """Split a claimed batch into the jobs to send and those the slow lane defers now.

    An endpoint that is slow and at its cap gets no ticket beyond it: its jobs past the
    cap wait (ticket None) in the runs of those admitted, for their turn
    (``perform_many``); only when not one of its jobs got a ticket are they deferred here.
    Once the gate refuses an endpoint, its later jobs are not asked for (a ticket freed
    meanwhile is for a waiting job's turn): an endpoint's tickets are the first of its
    jobs, so each of its runs starts with one.
    """
    keys = [slow_lane.key_for(job.endpoint_id, job.url) for job in jobs]
    tickets: list[slow_lane.Ticket | None] = []
    refused_keys: set[object] = set()
    ticketed_keys: set[object] = set()
    for key in keys:
        ticket = None if key in refused_keys else slow_lane.GATE.admit(key, settings)
        (refused_keys if ticket is None else ticketed_keys).add(key)
        tickets.append(ticket)
    admitted: list[Admitted] = []
    refused: list[DeliveryJob] = []
    for job, key, ticket in zip(jobs, keys, tickets, strict=True):
        if ticket is None and key not in ticketed_keys:
            refused.append(job)
        else:
            admitted.append((job, ticket))
    return admitted, refused


@dataclass
class Sends:
    """``perform_many``'s results, by job: a POST's result, or None when it was not sent:
    refused by the slow lane (its index in ``refused``: after a slow answer in its run,
    or the endpoint slow and at its cap), or past the cutoff or once the worker was
    stopping (handed back unsent)."""
    results: list[sender.SendResult | None]
    refused: set[int] = field(default_factory=set)
    # Not sent: their endpoint moved, was disabled or deleted since the claim
    # (``still_there``); handed back unsent, as past the cutoff.
    moved: set[int] = field(default_factory=set)


# A batch's runs still out after this long (of a slow endpoint, one that hangs) do not
# hold the recording of those that ended: ``perform_many``'s ``early``.
EARLY_RECORD_AFTER = 1.0

Early = Callable[["Sends", list[int]], None]


def perform_many(jobs: Sequence[Admitted], settings: Settings,
                 send_until: float | None = None, early: Early | None = None,
                 still_there: Callable[[DeliveryJob], bool] | None = None) -> Sends:
    """POST in parallel, at most ``endpoint_concurrency`` at once per endpoint in this
    process, so a batch for one merchant does not open dozens of connections at once.

    Each endpoint's jobs are dealt into at most that many runs; a run holds one of the
    endpoint's slots and sends its jobs one after the other. One pool task and one slot
    per run, not per job: the thread hand-offs were a tenth of a worker's CPU. An endpoint
    with waiting jobs (slow, at its cap) gets one run per ticket: a waiting job asks the
    slow lane again at its turn if the run has not yet lasted ``slow_send_seconds``, so
    a healthy endpoint that answered slowly once is not deferred for the whole slow
    window, while a slow one's run holds the batch's recording for one more send at
    most. In every run, a send that answers slowly or times out ends it: the jobs after
    it are deferred (``refused``), so an endpoint that starts hanging holds each of its
    runs' threads for one timeout, not for one per job. An endpoint that has not answered
    this process fast lately (``GATE.trusted``) gets no more runs per batch than a slow
    one, and once it shows as slow no POST to it starts beyond its cap, whichever batch
    it belongs to (``GATE.may_start``): of the send pool, which every endpoint's runs
    share, a hanging endpoint holds the POSTs started before it was seen to hang.

    A job whose turn comes after ``send_until`` is not sent (its result is None): a run
    behind a slow endpoint, or queued behind other tasks' runs, must not outlive the lease.
    Nor is one whose turn comes once the worker is stopping (``deliverer.stopping``): its
    warm shutdown then lasts the POSTs in flight, not a batch's worth of them. Nor one
    that ``still_there`` says no longer goes where it was claimed for (``moved``).

    Runs still out do not hold the others: every ``EARLY_RECORD_AFTER`` (or the slow
    threshold, if shorter) while some are out, ``early`` is called with the indexes of
    the runs that ended since, so that their outcomes are recorded (and shown) while the
    rest are out (or still queued for the send pool, behind a backlog). Its failure is
    logged, and those outcomes are the caller's to record with the rest: every run is
    waited for whatever happens, so none is left unrecorded.
    """
    sends = Sends([None] * len(jobs))
    by_endpoint: dict[object, list[int]] = {}
    for i, (job, _ticket) in enumerate(jobs):
        by_endpoint.setdefault(slow_lane.key_for(job.endpoint_id, job.url), []).append(i)
    runs: list[list[int]] = []
    for key, indexes in by_endpoint.items():
        # The admitted come first (admit_many hands out tickets in the batch's order), so
        # every run starts with one when the endpoint has waiting jobs.
        ticketed = sum(1 for i in indexes if jobs[i][1] is not None)
        width = min(settings.endpoint_concurrency, ticketed, len(indexes))
        if not slow_lane.GATE.trusted(key, settings):
            width = min(width, settings.slow_endpoint_concurrency)
        width = max(1, width)
        runs.extend(indexes[k::width] for k in range(width))

    def run(indexes: list[int]) -> None:
        answered_fast = True
        with _slot(jobs[indexes[0]][0], settings.endpoint_concurrency):
            started = time.monotonic()
            for i in indexes:
                job, ticket = jobs[i]
                if (ticket is None and answered_fast
                        and time.monotonic() - started < settings.slow_send_seconds):
                    ticket = slow_lane.GATE.admit(
                        slow_lane.key_for(job.endpoint_id, job.url), settings)
                # Deferred, as the slow lane defers: after a slow answer in this run (the
                # endpoint hangs or crawls: the rest would hold a send thread a timeout
                # each, and other endpoints' runs would queue behind it), a waiting job
                # the gate still refuses, or a ticket handed out before the endpoint was
                # seen to hang whose POST would go past the cap (another batch's POSTs
                # show it now).
                if (not answered_fast or ticket is None
                        or not slow_lane.GATE.may_start(ticket, settings)):
                    if ticket is not None:
                        slow_lane.GATE.done(ticket, None, settings)  # never started
                    sends.refused.add(i)
                    continue
                if stopping() or (send_until is not None
                                  and time.monotonic() > send_until):
                    slow_lane.GATE.done(ticket, None, settings)  # never started
                    continue
                if still_there is not None and not still_there(job):
                    slow_lane.GATE.done(ticket, None, settings)  # never started
                    sends.moved.add(i)
                    continue
                with delivery_context(job.notification_id):
                    result = perform_admitted(job, ticket, settings)
                sends.results[i] = result
                answered_fast = slow_lane.answered_fast(result, settings)

    if len(runs) == 1:
        run(runs[0])
        return sends
    pool = _executor(settings.send_concurrency)
    futures = {pool.submit(run, indexes): indexes for indexes in runs}
    if early is not None:
        pending = set(futures)
        every = min(EARLY_RECORD_AFTER, settings.slow_send_seconds)
        while pending:
            ended, pending = wait_for_futures(pending, timeout=every)
            indexes = [i for future in ended if future.exception() is None
                       for i in futures[future]]
            if pending and indexes:
                try:
                    early(sends, indexes)
                except Exception:
                    log.exception("recording a batch's first outcomes failed: with the rest")
    for future in futures:
        future.result()  # waits; a run's error is the batch's
    return sends
