"""The Redis transport publishes through one client per channel, and survives a broker
stop under running tasks; over TLS too, with the certificate verified (production
backend)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from deliverer.broker import redis_transport
from deliverer.celery_app import make_celery
from deliverer.config import Settings
from tests.faults.harness import PrivateRedis


def test_every_publish_of_a_channel_uses_one_client_and_messages_arrive(
        settings: Settings, celery_app: Celery) -> None:
    if not settings.broker_url.startswith("redis://"):
        pytest.skip("the Redis transport is used when the broker is Redis")
    _one_client_per_channel(celery_app)


def _one_client_per_channel(celery_app: Celery) -> None:
    with celery_app.connection_for_write() as conn:
        # The URL keeps its scheme (Flower chooses its Redis client by it).
        assert conn.as_uri().startswith(("redis://", "rediss://"))
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
    _hand_back_after_detach(celery_app)


def _hand_back_after_detach(celery_app: Celery) -> None:
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


@pytest.fixture(scope="module")
def tls_redis(settings: Settings, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[PrivateRedis]:
    """A redis-server of this module's own, speaking TLS only (certificate for 127.0.0.1)."""
    _redis_only(settings)
    server = PrivateRedis(Path(tmp_path_factory.mktemp("tls")), tls=True)
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def _tls_app(settings: Settings, url: str) -> Celery:
    return make_celery(settings.with_overrides(broker_url=url))


def test_a_rediss_broker_certificate_is_verified_unless_the_url_says_otherwise(
        settings: Settings, tls_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu alone connects to a rediss:// URL without verifying the server (a warning
    in the log): a broker on a provider's network could then be anyone's."""
    plain = tls_redis.url.partition("?")[0]  # no CA named: the system's CAs
    conn = _tls_app(settings, plain).connection_for_write()
    with pytest.raises(OperationalError, match="certificate verify failed"):
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    conn.release()
    # The provider's self-signed certificate, accepted on purpose.
    with _tls_app(settings, f"{plain}?ssl_cert_reqs=none").connection_for_write() as conn:
        assert conn.default_channel.client.ping()
    # A CA bundle of the machine's own, named as OpenSSL reads it (README).
    assert tls_redis.certificate is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.certificate[0]))
    with _tls_app(settings, plain).connection_for_write() as conn:
        assert conn.default_channel.client.ping()


def test_a_rediss_broker_carries_messages_through_deliverers_transport(
        settings: Settings, tls_redis: PrivateRedis) -> None:
    app = _tls_app(settings, tls_redis.url)  # ?ssl_ca_certs=<the server's certificate>
    _one_client_per_channel(app)
    # and the hand-back that once made the worker exit works over TLS too
    _hand_back_after_detach(app)


def test_flowers_broker_page_reads_a_rediss_broker_with_the_urls_ca(
        settings: Settings, tls_redis: PrivateRedis) -> None:
    """Flower takes TLS options from broker_use_ssl only, not from the URL."""
    broker_module = pytest.importorskip("flower.utils.broker")
    app = _tls_app(settings, tls_redis.url)  # ?ssl_ca_certs=<the server's certificate>
    with app.connection() as conn:
        uri = conn.as_uri(include_password=True)
    assert uri.startswith("rediss://")
    broker = broker_module.Broker(uri, broker_options=app.conf.broker_transport_options,
                                  broker_use_ssl=app.conf.broker_use_ssl)
    lengths = asyncio.run(broker.queues(["deliverer.test.flower"]))
    assert lengths == [{"name": "deliverer.test.flower", "messages": 0}]
