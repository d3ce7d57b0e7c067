"""Celery beat's schedule: the sweep that drives the retry ladder, and housekeeping.

Run exactly one beat per deployment. Everything it triggers is safe to run twice, so a
second beat started by mistake causes no double delivery (see deliverer.scheduling.sweep).

Beat keeps no state: it runs Celery's in-memory scheduler (``beat_scheduler`` in
deliverer.celery_app), so it needs no writable file and starts under any working
directory, a read-only one included. Every entry is an interval that is safe to run late,
early or twice, and all but the sweep run as beat starts (``AT_START``); what must happen
once a day (the attempt purge) keeps its last run in the database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deliverer.config import Settings

# Every minute at the default sweep interval: a held queue is a rare race's leftover.
REPAIR_EVERY_SWEEPS = 12
PURGE_CHECK_EVERY = timedelta(hours=1)
# Housekeeping's last run as beat starts: long ago, so each runs at once, then every
# interval. Beat keeps no state, and an entry's first run came one interval after its
# start: a beat restarted more often than hourly never checked the purge, and the
# embedded broker was never pruned (an embedded-default try: 15,300 messages in 22 MB).
AT_START = datetime(2000, 1, 1, tzinfo=UTC)


def build(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = timedelta(seconds=settings.sweep_interval)
    schedule = {
        "sweep-due-notifications": {
            "task": "deliverer.sweep_due",
            "schedule": interval,
            # A sweep that waited longer than its own interval is superseded by the next.
            "options": {"expires": max(1.0, settings.sweep_interval)},
        },
        # The net under the endpoint queues: held notifications that no head, drain or
        # promotion would release (deliverer.delivery.endpoint_queue.repair).
        "repair-held-queues": {
            "last_run_at": AT_START,
            "task": "deliverer.repair_queues",
            "schedule": interval * REPAIR_EVERY_SWEEPS,
            "options": {"expires": max(1.0, settings.sweep_interval * REPAIR_EVERY_SWEEPS)},
        },
        # Endpoints failing without a break for DELIVERER_AUTO_DISABLE_AFTER are disabled,
        # also when no attempt to them is recorded meanwhile
        # (deliverer.delivery.recording.auto_disable).
        "disable-failing-endpoints": {
            "last_run_at": AT_START,
            "task": "deliverer.disable_failing_endpoints",
            "schedule": interval * REPAIR_EVERY_SWEEPS,
            "options": {"expires": max(1.0, settings.sweep_interval * REPAIR_EVERY_SWEEPS)},
        },
        # Alert e-mails whose task was lost (broker down at the commit), gave up (SMTP down
        # longer than its retries) or died mid-send: offered again for a day, once the dead
        # worker's claim has run out (deliverer.alerts.service).
        "email-unmailed-alerts": {
            "last_run_at": AT_START,
            "task": "deliverer.sweep_alert_emails",
            "schedule": timedelta(minutes=5),
            "options": {"expires": 300.0},
        },
        # Retention: attempts older than DELIVERER_ATTEMPT_RETENTION_DAYS, once a day.
        # Checked hourly: the maintenance_runs row, not beat, knows when it last ran, so a
        # beat restart or a beat down at some hour never skips it, and it never runs twice
        # at once (deliverer.operations.maintenance_run).
        "purge-old-attempts": {
            "last_run_at": AT_START,
            "task": "deliverer.purge_attempts",
            "schedule": PURGE_CHECK_EVERY,
            "options": {"expires": PURGE_CHECK_EVERY.total_seconds()},
        },
    }
    if settings.broker_is_sqla:
        # kombu's SQLAlchemy transport (the embedded default) keeps every message it has
        # handed out (deliverer.broker.sqla_broker).
        schedule["prune-broker-messages"] = {
            "last_run_at": AT_START,
            "task": "deliverer.prune_broker",
            "schedule": timedelta(minutes=10),
            "options": {"expires": 600.0},
        }
    return schedule
