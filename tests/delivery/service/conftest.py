"""The delivery-service tests' partner: one partner sending to the loopback receiver."""

from __future__ import annotations

import pytest

from tests.support import helpers as h


@pytest.fixture
def partner(settings, receiver):
    return h.new_partner(settings, receiver.url("/hook"))
