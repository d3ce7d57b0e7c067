"""The Celery application: at-least-once delivery settings and the queue lanes.

``make_celery`` builds it; ``api.extensions.celery_init_app`` binds it to the Flask app
and ``deliverer.worker`` is the worker and beat entry point.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery import _state as celery_state
from celery.signals import after_setup_logger, worker_process_init
from kombu import Exchange, Queue
from kombu.utils.url import parse_url

from deliverer.broker import dispatch, queues, redis_transport
from deliverer.broker.sqla_broker import SQLA_TRANSPORT_OPTIONS
from deliverer.config import Settings, get_settings

APP_NAME = "deliverer"
TASK_MODULES = [
    "deliverer.delivery.tasks",
    "deliverer.scheduling.tasks",
    "deliverer.publishing.tasks",
    "deliverer.notifications.tasks",
    "deliverer.operations.tasks",
    "deliverer.alerts.tasks",
]


# RabbitMQ: a publish returns once the broker has taken the message (publisher
# confirms), so a message is never lost between a committed row and a broker that
# accepted the publish but went down before writing it. Queues are classic and durable
# (kombu's default) and messages persistent (Celery's): README, "Choosing a broker".
AMQP_TRANSPORT_OPTIONS: dict[str, Any] = {"confirm_publish": True}


def celery_config(settings: Settings) -> dict[str, Any]:
    import beat_schedule

    transport_options: dict[str, Any] = {}
    if settings.broker_is_sqla:
        transport_options = SQLA_TRANSPORT_OPTIONS
    if settings.broker_is_redis:
        transport_options = {
            # Must exceed the longest ETA we ever send (the sweep horizon) plus a run,
            # or Redis hands the message to a second worker.
            "visibility_timeout": max(3600, int(settings.sweep_horizon * 10)),
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            # No retry_on_timeout: it gives redis-py's connections a retry that also
            # covers connection errors, and the worker's pub/sub connection (remote
            # control's pidbox) then reconnects inside kombu's read after a Redis
            # restart and blocks the worker's event loop reading the new socket: alive,
            # consuming nothing (tests/faults/test_broker_restart.py, README).
        }
    if settings.broker_is_amqp:
        transport_options = AMQP_TRANSPORT_OPTIONS
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2,
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: a worker killed mid-task gets its message redelivered (Redis:
        # once the visibility timeout has passed). Tasks are idempotent (the claim), so a
        # redelivery never causes a second POST. kombu's SQLAlchemy transport (embedded)
        # has no acknowledgement: what a killed worker had taken is gone, and the beat
        # sweep hands it over again after DELIVERER_LOST_MESSAGE_GRACE.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        # Off: after a reconnect Celery lowers the prefetch count and raises it again as
        # tasks finish, calling basic.qos from the promise of each acknowledgement. With
        # the threads pool that promise runs in the pool thread, which then reads the
        # AMQP socket the main loop reads too (py-amqp is not thread-safe): seen with
        # py-spy, the thread waited for a basic.qos-ok the main loop had taken, holding
        # the QoS lock, and the worker ran nothing more (tests/faults/
        # test_broker_restart.py on RabbitMQ, 1 run in 4). Over-fetching after a
        # reconnect costs nothing here: prefetched messages only wake claims.
        "worker_enable_prefetch_count_reduction": False,
        # One exchange and routing key per queue: sharing the default exchange's key
        # would bind every queue to every message.
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name)
                        for name in queues.ALL],
        "task_default_queue": queues.MAINTENANCE,
        "task_routes": dispatch.ROUTES,
        # A publish during a broker outage must return quickly: the row is committed and
        # the sweep will enqueue it, so do not hang the API retrying the broker.
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        "beat_schedule": beat_schedule.build(settings),
        # Beat's state in memory, not in a shelve file: no file to create or write, so it
        # runs from a read-only working directory, and a fresh deploy needs no folder.
        # Nothing is lost on a restart: intervals start over, and the daily purge keeps its
        # last run in the database (beat_schedule.py).
        "beat_scheduler": "celery.beat:Scheduler",
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        # celery inspect / control and Flower need the worker's remote control; the Redis
        # transport options above say what once broke it. kombu's SQLAlchemy transport
        # (embedded) cannot carry a broadcast between processes: there it would only add
        # a queue for the worker to poll.
        "worker_enable_remote_control": not settings.broker_is_sqla,
    }
    tls = broker_tls(settings.broker_url)
    if tls is not None:
        config["broker_use_ssl"] = tls
    return config


def broker_tls(broker_url: str) -> dict[str, Any] | None:
    """A TLS broker's certificate verified, chain and host name, against the system's CAs
    (SSL_CERT_FILE, read by OpenSSL, adds one). kombu alone connects to a
    rediss:// URL without verifying anything (with a warning), and to an amqps:// URL
    without checking that the certificate is the broker's host's."""
    if broker_url.startswith("rediss://"):
        # redis-py's names. The URL's own ssl_* parameters, read as kombu reads them
        # (?ssl_ca_certs=/path/ca.pem, or ?ssl_cert_reqs=none for a provider's
        # self-signed certificate), replace the default: kombu would take them from the
        # URL anyway, but Flower's Broker page reads only this setting.
        return dict(parse_url(broker_url).get("ssl") or {"ssl_cert_reqs": ssl.CERT_REQUIRED})
    if broker_url.startswith("amqps://"):
        # py-amqp's names; kombu fills server_hostname with the URL's host (and so
        # turns on the check), once, in this dict: one broker host, not a failover list
        # (a second host would be checked against the first's name). kombu connects to
        # "localhost" as 127.0.0.1, the name then checked.
        return {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    return None


@contextmanager
def producing(settings: Settings | None = None) -> Iterator[Celery]:
    """deliverer's Celery app as this thread's current one while a producer's call runs
    (``deliverer.publish_event``, the CLI's publish). The broker's messages go through
    the current app (``broker.dispatch``), and a process that made none, a producer's own
    program or the CLI, sent them through Celery's default app (amqp://localhost) or the
    producer's own: lost, or left to the sweep's lost-message grace. A process whose
    current app is deliverer's (the worker, the web, the tests) keeps it."""
    current = celery_state.get_current_app()
    if current.main == APP_NAME:
        yield current
        return
    # This thread's own slot, often empty (the default app then serves): given back as
    # it was, so that a producer's later set_default() still reaches this thread.
    slot = celery_state._tls.current_app
    try:
        app = _producer_app((settings or get_settings()).broker_url)
        app.set_current()
        yield app
    finally:
        celery_state._tls.current_app = slot


@functools.lru_cache(maxsize=4)
def _producer_app(broker_url: str) -> Celery:
    # One app per broker: its connection pool serves every publish of the process.
    return make_celery(get_settings().with_overrides(broker_url=broker_url))


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if settings.is_sqlite or settings.broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.broker_is_sqla:
        _poll_sqla_faster()
    if settings.broker_is_redis:
        # One publishing client per channel, and a worker that survives a broker stop
        # under running tasks.
        redis_transport.install()
    app = Celery(APP_NAME, include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    return app


def _poll_sqla_faster() -> None:
    # The SQLAlchemy transport polls its tables, by default once a second: a second of
    # latency on every hop of the embedded default. Its transport options all go to
    # create_engine, so the interval can only be set on the transport class.
    from kombu.transport import sqlalchemy as sqla_transport

    sqla_transport.Transport.polling_interval = 0.1


@worker_process_init.connect
def _dispose_engine_after_fork(**_: Any) -> None:
    from deliverer.db import dispose_after_fork

    dispose_after_fork()


@after_setup_logger.connect
def _log_notification_ids(logger: Any = None, **_: Any) -> None:
    # Every worker log line says which notification it is about (deliverer.logging).
    from deliverer.logging import configure_celery_handlers

    configure_celery_handlers(logger)
