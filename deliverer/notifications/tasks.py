"""Celery task for merchant-requested resends."""

from __future__ import annotations

from celery import shared_task

from deliverer.broker import dispatch
from deliverer.config import get_settings
from deliverer.notifications.resend import perform_resend


@shared_task(name=dispatch.RESEND, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def resend(request_id: int) -> str | None:
    return perform_resend(request_id, get_settings())
