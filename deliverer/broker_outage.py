"""An expected broker outage is one WARNING line in the logs, not a traceback.

The broker going away (Redis or RabbitMQ restarted, a network blip) is handled: a publish
leaves its committed row to the beat sweep, the worker reconnects, beat sends the next
sweep. What an operator needs from each such event is one line saying so; a traceback
stays for what is not expected, such as wrong credentials or a bug, and for whatever
stops a process (Celery's "Unrecoverable error").

``BrokerOutageFilter`` sits on the handlers of web, CLI, worker and beat
(``deliverer.logging``) and shortens the records that Celery, kombu and deliverer log
about these errors: beat's "Message Error" with its formatted stack, the worker's and
beat's reconnect lines, a publish that fell back to the sweep.
"""

from __future__ import annotations

import logging
import ssl

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery.beat import SchedulingError
from celery.exceptions import Reject

_OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    amqp.exceptions.RecoverableConnectionError,
)
# A refused login or a certificate that fails verification (redis-py and kombu wrap it
# in their connection errors) is a configuration error, not an outage: it keeps its
# traceback.
_NOT_OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
    amqp.exceptions.AccessRefused,
    ssl.SSLCertVerificationError,
)
# Exceptions that only carry another one up, raised in the except block of a failed
# send (without "from"): beat's, and a task's retry that could not be sent (Celery's
# Task.retry raises Reject). Any other exception raised while handling an outage is
# what the outage brought out (a bug in Celery, kombu or here, or a state no one
# expected): it keeps its traceback. One that an outage was raised while handling is
# not (kombu's IndexError of an empty channel list, caught and then connecting).
_WRAPPERS: tuple[type[BaseException], ...] = (SchedulingError, Reject)
# Celery's lines as the worker or beat exits: never shortened, even for an outage.
_FATAL_LINES = ("Unrecoverable error", "beat raised exception")
# Celery's own reconnect lines, logged as errors without an exception attached: the
# worker's consumer, and beat's connection and its pidbox.
_RECONNECT_LINES = ("consumer: Cannot connect to", "beat: Connection error:",
                    "beat pidbox: Connection error:")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_broker_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the broker being unreachable."""
    chain = _chain(exc)
    if any(isinstance(e, _NOT_OUTAGES) for e in chain):
        return False
    for e in chain:  # from the exception logged back through the wrappers
        if isinstance(e, _OUTAGES):
            return True
        if not isinstance(e, _WRAPPERS):
            return False
    return False


def describe(exc: BaseException) -> str:
    """The exception in one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _shorten(record: logging.LogRecord, exc: BaseException | None) -> None:
    message = (record.getMessage().strip().splitlines() or [""])[0].rstrip(".")
    if exc is not None:
        first = (str(exc).strip().splitlines() or [""])[0]
        if not first or first.rstrip(".") not in message:
            message = f"{message}: {describe(exc)}"
    record.msg, record.args = message, None
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    if record.levelno > logging.WARNING:
        record.levelno, record.levelname = logging.WARNING, "WARNING"


class BrokerOutageFilter(logging.Filter):
    """Handler filter: records about a broker outage become one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_FATAL_LINES):
            return True  # the process is going down: whatever the cause, all of it shows
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_broker_outage(exc):
            _shorten(record, exc)
        elif (exc is None and record.name.startswith("celery")
              and isinstance(record.msg, str) and record.msg.startswith(_RECONNECT_LINES)):
            _shorten(record, None)
        return True
