"""RabbitMQ as the bench stack's broker (``BENCH_BROKER=rabbitmq``): a vhost of the run's
own on the machine's RabbitMQ (127.0.0.1:5672, guest), made with ``rabbitmqctl`` and
deleted at the end, so concurrent runs and test sessions never share queues. Redis stays
claimed for the plain-Celery reference's progress counters."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess

from deliverer.broker import queues

SERVER = "amqp://guest:guest@127.0.0.1:5672"


def chosen() -> bool:
    return os.environ.get("BENCH_BROKER", "redis").strip().lower() == "rabbitmq"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                   timeout=60, stdin=subprocess.DEVNULL)


def create_vhost() -> tuple[str, str]:
    """(vhost, broker URL)."""
    vhost = f"deliverer_bench_{secrets.token_hex(5)}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost, f"{SERVER}/{vhost}"


def delete_vhost(vhost: str) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        _ctl("delete_vhost", vhost)


def purge(broker_url: str, extra: tuple[str, ...] = ()) -> None:
    """Empty deliverer's queues (and ``extra``) in the vhost; a queue not declared yet
    is empty already."""
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as conn:
        for name in (*queues.ALL, *extra):
            channel = conn.channel()
            try:
                channel.queue_purge(name)
            except Exception:  # NOT_FOUND closes the channel: nothing to purge
                continue
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
