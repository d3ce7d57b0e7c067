"""A RabbitMQ broker over TLS (``amqps://``): the certificate is verified, and it must be
the broker's host's (RabbitMQ pass; a private node with a TLS listener)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from deliverer.celery_app import make_celery
from deliverer.config import Settings
from tests.faults.rabbitmq_node import PrivateRabbitMQ
from tests.support.backend import BACKEND


@pytest.fixture(scope="module")
def tls_node() -> Iterator[PrivateRabbitMQ]:
    if BACKEND != "rabbitmq":
        pytest.skip("runs in the RabbitMQ pass")
    node = PrivateRabbitMQ(tls=True)
    try:
        node.start()
        yield node
    finally:
        node.destroy()


def _connects(app: Celery) -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        conn.default_channel.queue_declare("deliverer.test.amqps", auto_delete=True)


def test_an_amqps_broker_must_hold_a_certificate_for_its_host(
        settings: Settings, tls_node: PrivateRabbitMQ,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu alone checks the chain but not the name: any certificate a trusted CA
    issued, for any host, would have passed for the broker's."""
    def app(host: str) -> Celery:
        return make_celery(settings.with_overrides(broker_url=tls_node.tls_url(host)))

    # The node's self-signed certificate is nobody's CA here.
    with pytest.raises(OperationalError, match="certificate verify failed"):
        _connects(app("127.0.0.1"))
    assert tls_node.certificate is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_node.certificate[0]))
    _connects(app("127.0.0.1"))
    # The same node and certificate, reached by a name the certificate does not cover.
    with pytest.raises(OperationalError, match="IP address mismatch"):
        _connects(app("127.0.0.2"))
