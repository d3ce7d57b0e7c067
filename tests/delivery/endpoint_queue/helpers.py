"""What the endpoint-queue tests share: a partner with a registered endpoint, moving it,
reading it back, saving webhook settings, running a drain, and holding notifications with
nothing scheduled to release them."""

from __future__ import annotations

from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.delivery import endpoint_queue
from deliverer.models import Endpoint, Notification, NotificationStatus, utcnow
from deliverer.partners import registered, webhook_settings
from deliverer.partners.service import NewPartner
from tests.support.helpers import new_partner


def registered_endpoint(settings, url: str) -> tuple[NewPartner, int]:
    """A new partner with one registered endpoint at ``url``: the partner, the endpoint's
    key."""
    partner = new_partner(settings, None)
    with session_scope() as session:
        key = registered.create(session, settings, partner.partner_id, url=url).id
        session.commit()
    return partner, key


def move_endpoint(settings, endpoint_id: int, url: str) -> None:
    """PATCH the endpoint's URL, committed."""
    with session_scope() as session:
        registered.update_endpoint(session, settings, session.get(Endpoint, endpoint_id),
                                   url=url)
        session.commit()


def endpoint_at(partner_id: str, url: str) -> Endpoint:
    with session_scope() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.partner_id == partner_id,
                                                    Endpoint.url == url))
        assert row is not None
        session.expunge(row)
        return row


def save_settings(partner_id: str, settings, **changes) -> None:
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner_id, **changes)


def run_drain(settings) -> int:
    with session_scope() as session:
        return endpoint_queue.drain(session, settings, utcnow())


def hold(*ids: str) -> None:
    """Held, as a race can leave a notification: nothing scheduled to release it."""
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id.in_(ids))
                        .values(held=True, status=NotificationStatus.FAILED,
                                next_attempt_at=None, scheduled_for=None))
