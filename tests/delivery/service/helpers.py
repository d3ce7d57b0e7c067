"""A notification of the service tests' partner, due now."""

from __future__ import annotations

from deliverer.models import NotificationStatus, utcnow
from tests.support import helpers as h


def due_now(partner, url, **kwargs):
    return h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=utcnow(), **kwargs)
