"""What the portal says after Retry or a test event: the attempt's outcome, waited for
briefly, in the portal's terms."""

from __future__ import annotations

from typing import Any

from api.db import commit_then
from api.views.portal.blueprint import deliverer_settings, flash
from api.views.portal.wording import hint
from deliverer.models import NotificationStatus
from deliverer.notifications.outcome import wait_for_attempt, wait_for_resend

# How long Retry and a test event wait for their attempt's outcome before answering
# "queued" (seed 003: "if your endpoint successfully receives the webhook, you get a
# success message"), at most.
OUTCOME_WAIT_CAP = 5.0


def send_and_show(notification_id: str, what: str, delivered: str) -> None:
    """Commit (the worker must see what the request wrote; its message goes out then),
    wait briefly for the notification's attempt, and say how it went: ``delivered``, the
    new error and its hint, or that it is still on its way."""
    wait = min(deliverer_settings().resend_wait_seconds, OUTCOME_WAIT_CAP)
    status, error = commit_then(lambda: wait_for_attempt(notification_id, wait))
    if status == NotificationStatus.SENT:
        flash("ok", delivered)
    elif status is None or status == NotificationStatus.PENDING:
        flash("ok", f"{what} queued: it is sent in a moment. Reload to see the outcome.")
    else:
        flash("error", failed(what, status, error))


def show_resend(request_id: int) -> None:
    """``send_and_show`` for a resend request: commit, wait briefly for its POST."""
    wait = min(deliverer_settings().resend_wait_seconds, OUTCOME_WAIT_CAP)
    status, error = commit_then(lambda: wait_for_resend(request_id, wait))
    if status == NotificationStatus.SENT:
        flash("ok", "Sent again: your endpoint accepted it.")
    elif status == NotificationStatus.FAILED:
        flash("error", failed("Send again", status, error))
    else:
        flash("ok", "Send again queued: it is sent in a moment. Reload to see the outcome.")


def failed(what: str, status: str, error: dict[str, Any] | None) -> str:
    """What failed and why, and what to do: the attempt's hint names the API's requests,
    the portal's its buttons (the pages' filter translates phrases, not the hints' whole
    sentences: a black-box try found one telling the merchant to PATCH the endpoint)."""
    advice = hint(error)
    return (f"{what} failed: {(error or {}).get('message') or status}."
            + (f" {advice}" if advice else ""))
