from __future__ import annotations

from celery import shared_task

from deliverer.alerts.service import email_alert, enqueue_unmailed
from deliverer.broker import dispatch
from deliverer.config import get_settings


@shared_task(name=dispatch.SEND_ALERT_EMAIL, ignore_result=True, acks_late=True,
             autoretry_for=(OSError,), retry_backoff=5, max_retries=5)
def send_alert_email(alert_id: int) -> bool:
    return email_alert(alert_id, get_settings())


@shared_task(name="deliverer.sweep_alert_emails", ignore_result=True)
def sweep_alert_emails() -> int:
    """Beat: another e-mail task for each recent alert not e-mailed yet."""
    return enqueue_unmailed(get_settings())
