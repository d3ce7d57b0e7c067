"""kombu's Redis transport, with one publishing client per channel.

kombu builds a new ``redis.Redis`` for every publish (``Channel.conn_or_acquire``), and
redis-py 8 copies its table of response callbacks into each new client: a fifth of the
CPU of an ``apply_async``, on every delivery, retry and manual retry. The clients all
share the channel's connection pool, and a ``redis.Redis`` is safe to share between
threads, so one client built on first use serves every publish. Nothing else changes:
connections, reconnection after a Redis restart and the consumer's client are kombu's.

Celery uses it through ``broker_transport`` (``celery_app.celery_config``) when the
broker is Redis.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _publishing_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._publishing_client is None:
            self._publishing_client = super()._create_client()
        return self._publishing_client

    def _disconnect_pools(self) -> None:
        # kombu drops its pools (after a fork, on close): the client goes with them, so
        # the next publish builds one on the pool kombu builds next.
        self._publishing_client = None
        super()._disconnect_pools()


class Transport(redis.Transport):
    Channel = Channel
