"""A notification's endpoint as the portal tests name it: its key, and its public id."""

from __future__ import annotations

from deliverer.db import session_scope
from deliverer.models import Endpoint
from tests.support import helpers as h


def endpoint_id(nid: str) -> int:
    endpoint = h.notification(nid).endpoint_id
    assert endpoint is not None
    return endpoint


def endpoint_ref(nid: str) -> str:
    """The public id the portal's addresses name the notification's endpoint by."""
    with session_scope() as session:
        endpoint = session.get(Endpoint, endpoint_id(nid))
        assert endpoint is not None
        return endpoint.public_id
