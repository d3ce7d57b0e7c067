"""Whether a claimed delivery still goes where its endpoint is, read again for a job
whose turn comes a while after its claim.

A batch leases its jobs, each with its URL, at the claim; its POSTs to one endpoint go a
few at a time, and to a slow endpoint the last of them start tens of seconds later. An
endpoint moved meanwhile (``PATCH`` of its URL, ``PUT`` of the webhook URL), disabled or
deleted still had them POSTed to the URL the merchant had left: up to 26 s after a move
in a black-box try, where the old URL's 2xx recorded them SENT and the new URL never
got them. So a job whose turn comes more than ``CHECK_AFTER`` after the claim is checked
against its endpoint's row, read at most every ``READ_EVERY`` per endpoint in this
process; one whose endpoint's URL is no longer the one read at its claim is handed
back unsent, and its next claim reads where it goes now. A turn that comes at once (a
healthy endpoint's) reads nothing, and a read that fails (the database restarting, the
pool exhausted) lets the job go as claimed: an exception there would leave the batch's
answered POSTs unrecorded, to be sent again when their leases ran out (the review).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from deliverer.db import session_scope
from deliverer.delivery.claim import DeliveryJob
from deliverer.models import Endpoint

log = logging.getLogger(__name__)

CHECK_AFTER = 1.0
READ_EVERY = 0.5
_MAX_CACHED = 10_000


class _Endpoints:
    """Endpoint id -> (read at, its URL if it takes deliveries, else None). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[int, tuple[float, str | None]] = {}

    def url(self, endpoint_id: int, batch: Collection[int]) -> str | None:
        """``endpoint_id``'s URL, read with the other endpoints of its ``batch`` not read
        lately, in one statement: a batch spread over many endpoints (1,000 partners)
        read one each, and its throughput fell by a third (the A/B)."""
        now = time.monotonic()
        with self._lock:
            cached = self._read.get(endpoint_id)
            if cached is not None and now - cached[0] < READ_EVERY:
                return cached[1]
            stale = [key for key in batch
                     if (seen := self._read.get(key)) is None or now - seen[0] >= READ_EVERY]
        with session_scope() as session:
            rows = session.execute(
                select(Endpoint.id, Endpoint.url, Endpoint.disabled_at, Endpoint.deleted_at)
                .where(Endpoint.id.in_(sorted({endpoint_id, *stale})))).all()
        found = {row.id: (row.url if row.disabled_at is None and row.deleted_at is None
                          else None) for row in rows}
        with self._lock:
            if len(self._read) >= _MAX_CACHED:
                self._read.clear()  # bounded; forgetting costs a read
            for key in {endpoint_id, *stale}:
                self._read[key] = (now, found.get(key))
        return found.get(endpoint_id)

    def reset(self) -> None:
        """Forget every endpoint (tests: ids are reused after a cleanup)."""
        with self._lock:
            self._read.clear()


ENDPOINTS = _Endpoints()


class StillThere:
    """For ``runs.perform_many``: whether a job of a batch claimed at ``claimed_at``
    (``time.monotonic()``) may still be sent where it was claimed for. One thread of the
    batch's runs reads at a time: the others find what it read."""

    def __init__(self, claimed_at: float, jobs: Iterable[DeliveryJob]) -> None:
        self.claimed_at = claimed_at
        self.endpoints = frozenset(job.endpoint_id for job in jobs
                                   if job.endpoint_id is not None)
        self._reading = threading.Lock()

    def __call__(self, job: DeliveryJob) -> bool:
        if (job.endpoint_id is None or job.endpoint_url is None
                or time.monotonic() - self.claimed_at < CHECK_AFTER):
            return True
        try:
            with self._reading:
                return not job.moved(ENDPOINTS.url(job.endpoint_id, self.endpoints))
        except SQLAlchemyError as exc:
            log.warning("endpoint %s not read before a late POST, sent as claimed: %s",
                        job.endpoint_id, str(exc).splitlines()[0])
            return True
