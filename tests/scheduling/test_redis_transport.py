"""The Redis transport publishes through one client per channel (production backend)."""

from __future__ import annotations

import pytest
from celery import Celery

from deliverer.broker import redis_transport
from deliverer.config import Settings


def test_every_publish_of_a_channel_uses_one_client_and_messages_arrive(
        settings: Settings, celery_app: Celery) -> None:
    if not settings.broker_url.startswith("redis://"):
        pytest.skip("the Redis transport is used when the broker is Redis")
    assert celery_app.conf.broker_transport == ("deliverer.broker.redis_transport:"
                                                "Transport")
    with celery_app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, redis_transport.Channel)
        queue = "deliverer.test.transport"
        channel.queue_declare(queue, auto_delete=False)
        try:
            seen = set()
            for i in range(3):
                channel.basic_publish(channel.prepare_message(f"m{i}"), exchange="",
                                      routing_key=queue)
                seen.add(id(channel._create_client()))
            assert len(seen) == 1
            assert channel._size(queue) == 3
            # Dropping the pools (a fork, a close) drops the client with them.
            channel._disconnect_pools()
            assert channel._publishing_client is None
            assert channel._size(queue) == 3
        finally:
            channel.queue_delete(queue)


QUEUE = "deliverer.test.unacked"


def _redis_only(settings: Settings) -> None:
    if not settings.broker_url.startswith("redis://"):
        pytest.skip("the Redis transport is used when the broker is Redis")


def test_a_connection_closed_after_its_transport_was_detached_hands_messages_back(
        settings: Settings, celery_app: Celery) -> None:
    """Celery 5.7's consumer, on a lost connection, collect()s it (detaching the
    transport) and then closes it; when the channel's own close failed on the dead
    socket in between, the close that follows hands the unacknowledged messages back
    with the transport detached. kombu raised AttributeError there ("'NoneType' object
    has no attribute 'hostname'"), and the worker exited. Then the event loop acks a
    task that ended meanwhile, on the closed channel: that raised too."""
    _redis_only(settings)
    conn = celery_app.connection_for_read()
    channel = conn.default_channel
    assert isinstance(channel, redis_transport.Channel)
    channel.queue_declare(QUEUE, auto_delete=False)
    try:
        channel.basic_publish(channel.prepare_message("task"), exchange="", routing_key=QUEUE)
        message = channel.basic_get(QUEUE, no_ack=False)
        assert message is not None and channel._size(QUEUE) == 0
        conn.transport.client = None  # what collect() leaves (_do_close_transport)
        conn.close()
        assert channel.connection is None  # closed for good
        message.ack()  # the late ack: no AttributeError
        with celery_app.connection_for_write() as other:
            assert other.default_channel._size(QUEUE) == 1  # handed back
    finally:
        with celery_app.connection_for_write() as other:
            other.default_channel.queue_delete(QUEUE)
