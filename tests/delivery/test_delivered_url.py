"""Where a notification says it was delivered: a move repoints what its endpoint holds,
the POSTs in flight too, and one of those delivered at the URL the endpoint left is SENT
there, not at the URL it moved to (the merchant API and the portal show the row's URL).
Driven through the real service and sender against a real loopback receiver."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from deliverer.db import session_scope
from deliverer.delivery import batch, service
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.partners import registered
from tests.support import receiver as rx
from tests.support.helpers import (
    deliver_when_due,
    insert_notification,
    new_partner,
    notification,
)


def _moved_while_out(settings, receiver, old_answers, deliver) -> tuple[list[str], str]:
    """A registered endpoint at /old, answering ``old_answers`` in turn, the last one
    held until PATCH has moved it to /new; two due notifications, the first delivered by
    ``deliver(first)`` in a thread; the move comes once its last POST to /old is out.
    Returns the ids and the new URL."""
    release = threading.Event()
    old = receiver.program("/old", old_answers[:-1], rx.held(release, old_answers[-1]))
    new = receiver.always("/new", rx.ok())
    partner = new_partner(settings, None)
    with session_scope() as session:
        key = registered.create(session, settings, partner.partner_id, url=old).id
        session.commit()
    ids = [insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow()) for _ in range(2)]
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(deliver, ids[0])
        receiver.wait_for(len(old_answers), "/old")
        with session_scope() as session:
            registered.update_endpoint(session, settings, session.get(Endpoint, key), url=new)
            session.commit()
        assert notification(ids[0]).url == new  # repointed while out
        release.set()
        assert in_flight.result(timeout=30) is not None
    return ids, new


@pytest.mark.parametrize("path", ["alone", "in a batch"])
def test_a_post_delivered_at_the_old_url_is_sent_there(settings, receiver, path):
    """The endpoint was healthy: a plain success, recorded alone or in bulk."""
    def deliver(nid: str) -> object:
        if path == "alone":
            return service.deliver(nid, settings)
        return batch.deliver_many([nid], settings)

    (first, second), new = _moved_while_out(settings, receiver, [rx.ok()], deliver)
    row = notification(first)
    assert (row.status, row.url) == (NotificationStatus.SENT, receiver.url("/old"))
    assert service.deliver(second, settings).status == NotificationStatus.SENT
    assert notification(second).url == new  # what the move repointed and sent there
    assert len(receiver.requests("/new")) == 1


def test_a_failing_heads_post_delivered_at_the_old_url_is_sent_there(settings, receiver):
    """The head failed at the old URL and was out there again: a success at a failing
    endpoint, recorded alone (it recovers nothing: the old URL's)."""
    (first, _second), _new = _moved_while_out(
        settings, receiver, [rx.status(500), rx.ok()],
        lambda nid: (service.deliver(nid, settings), deliver_when_due(nid, settings))[1])
    row = notification(first)
    assert (row.status, row.url) == (NotificationStatus.SENT, receiver.url("/old"))
