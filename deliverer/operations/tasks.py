"""Housekeeping tasks run by beat (``beat_schedule.py``)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task

from deliverer import stopping
from deliverer.config import get_settings
from deliverer.operations.purge import purge_attempts as purge


@shared_task(name="deliverer.purge_attempts", ignore_result=True)
def purge_attempts() -> int:
    """Delete attempts older than DELIVERER_ATTEMPT_RETENTION_DAYS. Safe to run twice."""
    settings = get_settings()
    return purge(timedelta(days=settings.attempt_retention_days), stop=stopping.stopping)
