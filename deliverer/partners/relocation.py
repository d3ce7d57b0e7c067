"""An endpoint at another URL (a PATCH of its URL, a new webhook-settings URL for the
default): the same endpoint, whose id, sequence numbers and what it still holds go
along, while the old URL's health stays behind. And which row a URL has already
(``row_for_url``): a URL is one endpoint's, so a move or a create finds the row first.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery import endpoint_queue
from deliverer.delivery.sending import netguard
from deliverer.errors import Conflict
from deliverer.models import Endpoint, Notification, NotificationStatus, WebhookSettings, utcnow

# Its id said: a create whose answer was lost finds its endpoint (rotate its secret).
URL_TAKEN = "Another endpoint of yours already has this URL: {id}"
URL_HAS_HISTORY = ("This URL has notifications of its own (an earlier webhook URL, an "
                   "event's callbackUrl or a deleted endpoint): register it with POST "
                   "/endpoints instead")


def row_for_url(session: Session, partner_id: str, url: str) -> Endpoint | None:
    return session.scalar(select(Endpoint).where(Endpoint.partner_id == partner_id,
                                                 Endpoint.url == url).with_for_update())


def move(session: Session, settings: Settings, endpoint: Endpoint, url: str) -> None:
    """The same endpoint at another URL: what it still holds goes there."""
    netguard.validate_saved_url(url, allow_private=settings.allow_private_urls)
    other = row_for_url(session, endpoint.partner_id, url)
    if other is not None:
        # Registered, or the row of an earlier webhook URL or callback URL with sequence
        # numbers of its own, which two endpoints cannot share.
        raise Conflict(URL_TAKEN.format(id=other.public_id) if other.registered
                       else URL_HAS_HISTORY)
    relocate(session, endpoint, url)
    if endpoint.is_default:
        session.execute(update(WebhookSettings)
                        .where(WebhookSettings.partner_id == endpoint.partner_id)
                        .values(url=url, updated_at=utcnow()))


def forget_health(endpoint: Endpoint) -> None:
    """What the endpoint's past failures left: failing since (auto-disable counts from
    it), a Retry-After pause, the alert sent."""
    endpoint.failing_since = endpoint.retry_after_until = endpoint.alerted_at = None
    endpoint.last_error = None  # the old URL's, shown by the console
    endpoint.consecutive_failures = 0


def relocate(session: Session, endpoint: Endpoint, url: str) -> None:
    """``endpoint`` at ``url`` from now on, with its id, its sequence numbers and what it
    still holds (its retries go to ``url``, the next one now). The old URL's health is
    not the new one's: failing since, Retry-After, the alert sent (auto-disable counts
    from ``failing_since``)."""
    endpoint.url = url
    forget_health(endpoint)
    # What it holds goes to the new URL in sequence order at the drain rate, beside the
    # head probed now: the head's success there would not drain them (the endpoint is
    # no longer failing), and they waited for the queue repair (a minute).
    endpoint.draining = True
    endpoint_queue.probe_now(session, endpoint.id, utcnow())
    session.execute(
        update(Notification)
        .where(Notification.endpoint_id == endpoint.id,
               Notification.status.in_((NotificationStatus.PENDING,
                                        NotificationStatus.FAILED)))
        .values(url=url)
        .execution_options(synchronize_session=False))
