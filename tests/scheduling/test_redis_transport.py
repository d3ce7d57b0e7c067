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
