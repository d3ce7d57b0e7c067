"""Delivery messages running at the same moment in a worker process go as one batch.

A burst of single publishes means one ``deliverer.deliver`` message per notification;
the task hands its id to a coalescer, so the messages a process runs at once share one
claim, parallel POSTs and one record (the ``deliver_many`` path), and each task returns
only once its own attempt is recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select

from deliverer.batching import Coalescer
from deliverer.db import session_scope
from deliverer.delivery import tasks
from deliverer.models import Attempt, Notification, NotificationStatus, utcnow
from tests.support import helpers as h


def _recording(sizes: list[int]) -> Coalescer[str, str]:
    def run(ids: Sequence[str]) -> list[str]:
        sizes.append(len(ids))
        return tasks._deliver_together(ids)

    return Coalescer("deliver-test", run, max_batch=50, runners=2)


def test_messages_running_at_once_are_claimed_sent_and_recorded_together(settings,
                                                                         receiver):
    url = receiver.url("/together")
    shop = h.new_partner(settings, url)
    ids = [h.insert_notification(shop.partner_id, url, next_attempt_at=utcnow(),
                                 status=NotificationStatus.PENDING) for _ in range(24)]
    sizes: list[int] = []
    together = _recording(sizes)
    barrier = threading.Barrier(len(ids))
    statuses: dict[str, str] = {}

    def task(nid: str) -> None:  # as the threads pool's threads run the tasks
        barrier.wait(timeout=10)
        statuses[nid] = together.submit(nid)

    threads = [threading.Thread(target=task, args=(nid,)) for nid in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert statuses == {nid: "SENT" for nid in ids}
    assert sum(sizes) == len(ids) and max(sizes) > 1, sizes  # batches formed
    posts = [r.headers["webhook-id"] for r in receiver.requests("/together")]
    assert sorted(posts) == sorted(ids)  # one POST each
    with session_scope() as session:
        assert session.scalar(select(Attempt.id).where(Attempt.notification_id.in_(ids))
                              .order_by(Attempt.id.desc()).limit(1)) is not None
        rows = session.execute(select(Notification.status, Notification.attempt_count)
                               .where(Notification.id.in_(ids))).all()
    assert rows and all(r.status == NotificationStatus.SENT and r.attempt_count == 1
                        for r in rows)


def test_a_message_alone_runs_at_once_and_says_what_became_of_it(settings, receiver):
    url = receiver.fail_then_succeed("/alone", 1)
    shop = h.new_partner(settings, url)
    failing = h.insert_notification(shop.partner_id, url, next_attempt_at=utcnow(),
                                    status=NotificationStatus.PENDING)
    elsewhere = receiver.url("/elsewhere")  # its own endpoint: not held behind the other
    later = h.insert_notification(shop.partner_id, elsewhere,
                                  next_attempt_at=utcnow() + timedelta(hours=1),
                                  status=NotificationStatus.FAILED)
    sizes: list[int] = []
    together = _recording(sizes)
    assert together.submit(failing) == "FAILED"
    assert together.submit(later) == "not_due"
    assert together.submit("00000000-0000-0000-0000-000000000000") == "not_sent_here"
    assert sizes == [1, 1, 1]
    assert len(receiver.requests("/alone")) == 1
