"""The portal pages' merchant whose endpoint fails: two FAILED notifications that stay put."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deliverer.models import NotificationStatus
from tests.console.helpers import publish, wait_failed
from tests.portal.conftest import Merchant
from tests.support import helpers as h
from tests.support.receiver import Receiver, status


@pytest.fixture
def failing(merchant, worker, receiver: Receiver, override_settings, settings
            ) -> Iterator[tuple[Merchant, str, str]]:
    """A merchant whose endpoint answers 503, with two FAILED notifications. The ladder
    runs in real time: the next automatic try is 2 minutes away, so they stay put."""
    with override_settings(time_scale=1.0):
        shop = merchant(receiver.program("/hooks", [], status(503, b"down for maintenance")))
        first = publish(settings, shop.partner_id, "TXN-1")
        wait_failed(first.notification_id)
        second = publish(settings, shop.partner_id, "TXN-2", event_type="invoice.settled")
        h.wait_until(lambda: h.notification(second.notification_id).status
                     == NotificationStatus.FAILED, message="second FAILED (held)")
        yield shop, first.notification_id, second.notification_id
