"""The bad-input tests' partner, and a FAILED notification of it."""

from __future__ import annotations

import pytest

from deliverer.models import NotificationStatus
from tests.support import helpers as h


@pytest.fixture
def partner(make_partner):
    return make_partner("http://127.0.0.1:9/hook")


@pytest.fixture
def failed(partner):
    return h.insert_notification(partner.partner_id, "http://127.0.0.1:9/hook",
                                 status=NotificationStatus.FAILED, reference="TXN-1")
