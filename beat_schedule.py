"""Celery beat's schedule: the sweep that drives the retry ladder, and housekeeping.

Run exactly one beat per deployment. Everything it triggers is safe to run twice, so a
second beat started by mistake causes no double delivery (see deliverer.scheduling.sweep).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery.schedules import crontab

if TYPE_CHECKING:
    from deliverer.config import Settings

# Every minute at the default sweep interval: a held queue is a rare race's leftover.
REPAIR_EVERY_SWEEPS = 12


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
            "task": "deliverer.repair_queues",
            "schedule": interval * REPAIR_EVERY_SWEEPS,
            "options": {"expires": max(1.0, settings.sweep_interval * REPAIR_EVERY_SWEEPS)},
        },
        # Alert e-mails whose task was lost (broker down at the commit), gave up (SMTP down
        # longer than its retries) or died mid-send: offered again for a day, once the dead
        # worker's claim has run out (deliverer.alerts.service).
        "email-unmailed-alerts": {
            "task": "deliverer.sweep_alert_emails",
            "schedule": timedelta(minutes=5),
            "options": {"expires": 300.0},
        },
        # Retention: attempts older than DELIVERER_ATTEMPT_RETENTION_DAYS, daily at 03:17 UTC.
        "purge-old-attempts": {
            "task": "deliverer.purge_attempts",
            "schedule": crontab(hour=3, minute=17),
            "options": {"expires": 3600.0},
        },
    }
    if settings.broker_is_sqla:
        # kombu's SQLAlchemy transport (the embedded default) keeps every message it has
        # handed out (deliverer.broker.sqla_broker).
        schedule["prune-broker-messages"] = {
            "task": "deliverer.prune_broker",
            "schedule": timedelta(minutes=10),
            "options": {"expires": 600.0},
        }
    return schedule
