"""Housekeeping tasks run by beat (``beat_schedule.py``)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task

from deliverer import stopping
from deliverer.config import get_settings
from deliverer.db import session_scope
from deliverer.models import utcnow
from deliverer.operations import maintenance_run
from deliverer.operations.purge import DEFAULT_BATCH, DEFAULT_MAX_BATCHES
from deliverer.operations.purge import purge_attempts as purge

log = logging.getLogger(__name__)

PURGE_JOB = "purge-attempts"
# Beat triggers the purge hourly (beat_schedule.PURGE_CHECK_EVERY); it runs when the last
# complete purge is a day old, less that hour's slack, so it keeps to about one time of day.
PURGE_EVERY = timedelta(hours=23)
# Renewed after every batch; a worker killed mid-purge holds the job no longer than this.
PURGE_LEASE = timedelta(minutes=15)


@shared_task(name="deliverer.purge_attempts", ignore_result=True)
def purge_attempts() -> int:
    """Delete attempts older than DELIVERER_ATTEMPT_RETENTION_DAYS, once a day, one run at
    a time however many beats or triggers there are; returns how many were deleted."""
    settings = get_settings()
    with session_scope() as session:
        if not maintenance_run.claim_if_due(session, PURGE_JOB, now=utcnow(),
                                            every=PURGE_EVERY, lease=PURGE_LEASE):
            log.info("attempt purge not due, or running elsewhere")
            return 0

    def renew(_deleted: int) -> None:
        with session_scope() as session:
            maintenance_run.renew(session, PURGE_JOB, now=utcnow(), lease=PURGE_LEASE)

    deleted = 0
    try:
        deleted = purge(timedelta(days=settings.attempt_retention_days),
                        stop=stopping.stopping, progress=renew)
    finally:
        # Stopped early or at its bound: not complete, so the next trigger carries on.
        completed = (not stopping.stopping()
                     and deleted < DEFAULT_BATCH * DEFAULT_MAX_BATCHES)
        with session_scope() as session:
            maintenance_run.finish(session, PURGE_JOB, now=utcnow(), completed=completed)
    return deleted
