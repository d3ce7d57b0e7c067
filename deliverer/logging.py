"""Log lines that say which notification they are about.

``delivery_context(notification_id)`` marks everything logged inside it, in this thread or
asyncio task (a ``contextvars.ContextVar``), with that id; ``ContextFormatter`` prints it
on every line, and ``-`` outside a delivery. A record logged with
``extra={"notification_id": ...}`` keeps its own id.

The worker gets it through Celery's ``after_setup_logger`` signal (``configure_celery_
handlers``, wired in ``deliverer.celery_app``), the web app through ``configure_logging``
in ``api.create_app``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

from celery.utils.log import ColorFormatter

from deliverer.broker_outage import BrokerOutageFilter

_notification_id: ContextVar[str | None] = ContextVar("deliverer_notification_id",
                                                      default=None)

FIELD = "notification_id"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [notification=%(notification_id)s] %(message)s"
_MARK = "_deliverer_handler"


def current_notification_id() -> str | None:
    return _notification_id.get()


@contextmanager
def delivery_context(notification_id: str) -> Iterator[None]:
    """Within the block, every log line carries ``notification_id``."""
    token = _notification_id.set(notification_id)
    try:
        yield
    finally:
        _notification_id.reset(token)


def _stamp(record: logging.LogRecord) -> None:
    if not getattr(record, FIELD, None):
        setattr(record, FIELD, _notification_id.get() or "-")


class NotificationIdFilter(logging.Filter):
    """Gives each record a ``notification_id`` attribute (handler filters see them all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        return True


# Line breaks and other control characters (C0 but tab, DEL, C1, the Unicode line and
# paragraph separators).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(value: Any) -> Any:
    """A string (or an exception, whose text may be a receiver's) with its control
    characters escaped; anything else as it is."""
    text = str(value) if isinstance(value, BaseException) else value
    if isinstance(text, str) and _CONTROL.search(text):
        return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    return value


class OneLineArgsFilter(logging.Filter):
    """Escapes control characters in a record's arguments: merchants' text (an endpoint's
    description, a receiver's answer) goes into log lines as an argument, and a line
    break in it wrote a line of any level and time into the worker's log (the security
    try). The format string, deliverer's or a library's, is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_escaped(a) for a in args)
        elif type(args) is dict:  # a subclass (a defaultdict) may rely on its own type
            record.args = {k: _escaped(v) for k, v in args.items()}
        return True


class ContextFormatter(logging.Formatter):
    """A formatter whose format may use ``%(notification_id)s``."""

    def __init__(self, fmt: str | None = LOG_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)
        return super().format(record)


def with_notification_id(fmt: str) -> str:
    """Celery's log format with the notification id in front of the message."""
    if f"%({FIELD})s" in fmt:
        return fmt
    if "%(message)s" in fmt:
        return fmt.replace("%(message)s", f"[notification=%({FIELD})s] %(message)s", 1)
    return f"{fmt} [notification=%({FIELD})s]"


def configure_logging(level: int | str = logging.INFO, stream: TextIO | None = None) -> None:
    """Web app and CLI: a root handler printing the notification id, unless logging is
    already configured (gunicorn's --log-config, pytest): then only add the attribute."""
    # Alembic (imported for /readyz's schema check) announces each of its plugins at
    # INFO as it is imported: seven lines per web process.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _MARK, False)]
    if ours:
        return
    if root.handlers:
        for handler in root.handlers:
            _add_filters(handler)
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(ContextFormatter())
    _add_filters(handler)
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(level)


class ContextColorFormatter(ColorFormatter):
    """Celery's coloured formatter, with ``%(notification_id)s`` available."""

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)
        return str(super().format(record))


def configure_celery_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    """``after_setup_logger``: put the notification id into the lines of the handlers
    Celery installed (its ``ColorFormatter``), keeping their format, colours and file."""
    if logger is None:
        return
    for handler in logger.handlers:
        formatter = handler.formatter
        # Celery's own formatter; not its task formatter (a subclass), not ours.
        if isinstance(formatter, ColorFormatter) and type(formatter) is ColorFormatter:
            fmt = with_notification_id(formatter._fmt or "%(message)s")
            replacement = ContextColorFormatter(fmt, use_color=formatter.use_color)
            replacement.datefmt = formatter.datefmt
            handler.setFormatter(replacement)
        _add_filters(handler)


def _add_filters(handler: logging.Handler) -> None:
    """The notification id on every line, merchants' text kept to its line, and a broker
    outage in one line."""
    for kind in (NotificationIdFilter, OneLineArgsFilter, BrokerOutageFilter):
        if not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(kind())
