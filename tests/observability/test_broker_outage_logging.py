"""An expected broker outage is one WARNING line; anything else keeps its traceback."""

from __future__ import annotations

import logging
import ssl
import sys

import kombu.exceptions
import pytest
import redis.exceptions
from celery.beat import SchedulingError
from celery.exceptions import Reject

from deliverer.broker_outage import BrokerOutageFilter, is_broker_outage

pytestmark = pytest.mark.unit


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        try:
            if cause is not None:
                raise cause
        except BaseException as inner:
            raise exc from inner
        raise exc
    except BaseException as caught:
        return caught


def _record(name: str, level: int, msg: str, args: tuple[object, ...],
            exc: BaseException | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def _formatted(record: logging.LogRecord) -> str:
    BrokerOutageFilter().filter(record)
    return logging.Formatter("%(levelname)s %(message)s").format(record)


def test_beats_message_error_about_a_refused_broker_is_one_warning_line():
    refused = kombu.exceptions.OperationalError(
        "Error 111 connecting to 127.0.0.1:6391. Connection refused.")
    exc = _raised(SchedulingError("Couldn't apply scheduled task sweep-due-notifications: "
                                  f"{refused}"), refused)
    record = _record("celery.beat", logging.ERROR, "Message Error: %s\n%s",
                     (exc, ["  File 'celery', line 6\n"] * 30), exc)
    line = _formatted(record)
    assert line == ("WARNING Message Error: Couldn't apply scheduled task "
                    "sweep-due-notifications: Error 111 connecting to 127.0.0.1:6391. "
                    "Connection refused")
    assert "\n" not in line and "Traceback" not in line
    # As Celery raises it: in the except block, without "from".
    assert is_broker_outage(_raised_while_handling(refused, SchedulingError("Couldn't")))


def test_a_task_retry_that_could_not_be_sent_is_an_outage():
    """Task.retry() raises Reject in the except block of the failed send; Celery logs it
    as a WARNING with its traceback."""
    refused = kombu.exceptions.OperationalError("Error 111 connecting. Connection refused.")
    rejected = _raised_while_handling(refused, Reject(refused, requeue=False))
    assert is_broker_outage(rejected)
    line = _formatted(_record("celery.app.trace", logging.WARNING,
                              "Task %(name)s[%(id)s] %(description)s: %(exc)s",
                              ({"name": "deliverer.publish", "id": "1",
                                "description": "rejected", "exc": repr(rejected)},),
                              rejected))
    assert line.startswith("WARNING Task deliverer.publish[1] rejected") and "\n" not in line


def test_the_workers_reconnect_lines_are_one_warning_line_each():
    record = _record("celery.worker.consumer.consumer", logging.ERROR,
                     "consumer: Cannot connect to %s: %s.\n%s\n",
                     ("redis://127.0.0.1:6391/0", "Error 111 connecting",
                      "Trying again in 2.00 seconds... (1/100)"), None)
    assert _formatted(record) == ("WARNING consumer: Cannot connect to "
                                  "redis://127.0.0.1:6391/0: Error 111 connecting")


def test_beats_reconnect_line_is_a_warning():
    record = _record("celery.beat", logging.ERROR,
                     "beat: Connection error: %s. Trying again in %s seconds...",
                     ("Error 111 connecting to 127.0.0.1:6391. Connection refused.", 2.0), None)
    assert _formatted(record).startswith("WARNING beat: Connection error: Error 111")


def test_a_connection_error_logged_with_its_traceback_loses_the_traceback():
    exc = _raised(redis.exceptions.ConnectionError("Connection closed by server."))
    line = _formatted(_record("deliverer.x", logging.WARNING, "publish failed", (), exc))
    assert line == "WARNING publish failed: ConnectionError: Connection closed by server."


def _certificate_refused() -> BaseException:
    # As redis-py raises it: its ConnectionError from the TLS handshake's error.
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed")
    return _raised(redis.exceptions.ConnectionError(
        "Error 1 connecting to 127.0.0.1:6390. certificate verify failed"), verify)


@pytest.mark.parametrize("exc", [
    ValueError("a bug"),
    redis.exceptions.AuthenticationError("invalid password"),  # configuration, not outage
    _certificate_refused(),  # configuration too: a rediss:// URL without its CA
])
def test_anything_else_keeps_its_traceback(exc):
    raised = _raised(exc) if exc.__traceback__ is None else exc
    assert not is_broker_outage(raised)
    record = _record("celery.beat", logging.ERROR, "Message Error: %s", (raised,), raised)
    line = _formatted(record)
    assert line.startswith("ERROR Message Error") and "Traceback" in line
    assert sys.exc_info() == (None, None, None)


def _raised_while_handling(lost: BaseException, bug: BaseException) -> BaseException:
    try:
        try:
            raise lost
        except BaseException:
            raise bug  # noqa: B904  # implicitly chained, as an unexpected error is
    except BaseException as caught:
        return caught


@pytest.mark.parametrize("bug", [
    AttributeError("'NoneType' object has no attribute 'hostname'"),
    ValueError("invalid literal for int() with base 10: ''"),
    RuntimeError("dictionary changed size during iteration"),
])
def test_an_error_raised_while_handling_an_outage_keeps_its_traceback(bug):
    """An error raised in an except block for a lost connection: what the outage
    brought out (a bug in Celery, kombu or here), not the outage."""
    lost = redis.exceptions.ConnectionError("Connection closed by server.")
    raised = _raised_while_handling(lost, bug)
    assert raised.__context__ is lost and not is_broker_outage(raised)
    line = _formatted(_record("celery.worker", logging.ERROR, "Error on %s %s: %r",
                              ("stopping", "Hub", raised), raised))
    assert line.startswith("ERROR Error on stopping Hub") and "Traceback" in line


def test_what_stops_a_process_keeps_its_level_and_traceback_even_an_outage():
    exc = _raised(redis.exceptions.ConnectionError("Connection closed by server."))
    line = _formatted(_record("celery.worker.worker", logging.CRITICAL,
                              "Unrecoverable error: %r", (exc,), exc))
    assert line.startswith("CRITICAL Unrecoverable error") and "Traceback" in line
    # kombu's ack of a message during the outage is CRITICAL too, but the worker goes on
    # (the message is handed back later): one line.
    line = _formatted(_record("kombu.message", logging.CRITICAL,
                              "Couldn't ack %r, reason:%r", (1, exc), exc))
    assert line.startswith("WARNING Couldn't ack 1") and "\n" not in line


def test_an_outage_raised_while_handling_a_lookup_error_is_an_outage():
    """kombu takes a free channel from a list (IndexError when empty, caught) and then
    connects: the connection error is the outage."""
    try:
        try:
            [].pop()
        except IndexError:
            raise redis.exceptions.ConnectionError(  # noqa: B904  # as kombu does
                "Error 111 connecting. Connection refused.")
    except redis.exceptions.ConnectionError as exc:
        assert isinstance(exc.__context__, IndexError) and is_broker_outage(exc)
