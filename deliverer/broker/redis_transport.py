"""kombu's Redis transport, with one publishing client per channel, and a channel that
can still reach Redis while its connection is being closed.

kombu builds a new ``redis.Redis`` for every publish (``Channel.conn_or_acquire``), and
redis-py 8 copies its table of response callbacks into each new client: a fifth of the
CPU of an ``apply_async``, on every delivery, retry and manual retry. The clients all
share the channel's connection pool, and a ``redis.Redis`` is safe to share between
threads, so one client built on first use serves every publish. Nothing else changes:
connections, reconnection after a Redis restart and the consumer's client are kombu's.

When the consumer's connection is lost, Celery 5.7 ``collect()``s the connection, which
detaches the transport (``transport.client = None``), then closes it. Closing the
channel hands its unacknowledged messages back to Redis (``restore_unacked``), which
needs a connection pool, built from ``transport.client``: kombu raised AttributeError
("'NoneType' object has no attribute 'hostname'"), which Celery takes for unrecoverable,
and the worker exited; so did an ack that the event loop ran after the channel was
closed. The channel keeps the connection's parameters from its start, so the hand-back
and such an ack connect. With Redis still down they fail with a connection error, which
kombu ignores (the close) or logs (the ack): the messages stay unacknowledged in Redis,
and the beat sweep's lost-message grace sends their notifications again long before
kombu's visibility timeout would. ``redis://`` and ``rediss://`` brokers use this
transport (``celery_app`` also has a TLS broker's certificate verified).

``install()`` makes ``redis://`` and ``rediss://`` URLs resolve to it in the process
(``celery_app.make_celery``), rather than naming it in Celery's ``broker_transport``:
a connection then keeps its URL's scheme wherever the URL is shown or read again
(Celery's banner; Flower's broker page and queue lengths, which choose their Redis
client by the scheme and answered 404 for the transport's dotted path).
"""

from __future__ import annotations

from typing import Any

import kombu.transport
from kombu.transport import redis

SCHEMES = ("redis", "rediss")


class Channel(redis.Channel):
    _publishing_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The connection's parameters while the transport is attached (see the module's
        # docstring): read once here, never by changing the shared transport.
        self._sync_params = super()._connparams()

    def _connparams(self, asynchronous: bool = False) -> Any:
        # Detached while closing, or closed (kombu sets the channel's connection to
        # None) with a task's ack still to come from the event loop.
        if getattr(self.connection, "client", None) is None and not asynchronous:
            return dict(self._sync_params)
        return super()._connparams(asynchronous=asynchronous)

    def close(self) -> None:
        try:
            super().close()
        finally:
            # The hand-back of unacknowledged messages in the close (or a task's ack
            # from its thread meanwhile) may have built a pool after kombu dropped its
            # pools: its sockets go too.
            self._disconnect_pools()

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


def install() -> None:
    """``redis://`` and ``rediss://`` URLs use this transport in this process."""
    path = f"{__name__}:Transport"
    for scheme in SCHEMES:
        if kombu.transport.TRANSPORT_ALIASES.get(scheme) != path:
            kombu.transport.TRANSPORT_ALIASES[scheme] = path
            # kombu caches what a name resolved to: a connection made before this
            # would otherwise keep kombu's own transport for the scheme.
            kombu.transport._transport_cache.pop(scheme, None)
