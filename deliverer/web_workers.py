"""The web processes' gunicorn workers (``--worker-class``): gunicorn's own
refusals, made before the app sees a request (a request line or header fields too
large, malformed HTTP), answer as the API's do, JSON ``{statusCode, code, message}``,
instead of gunicorn's HTML page, which a merchant's client cannot read as an error.

gunicorn's master process imports this module (to load the worker class) and forks
its workers from itself: it imports gunicorn and ``http_codes`` only, so that a HUP,
which makes new workers without importing anything again, still loads the app's new
code in them (importing ``api`` here kept its old modules in every later worker)."""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker as _GunicornThreadWorker
from gunicorn.workers.sync import SyncWorker as _GunicornSyncWorker

from deliverer.http_codes import CODES

_MESSAGES = {
    400: "Malformed HTTP request",
    403: "Request forbidden",
    414: "The request line is too long",
    417: "Expectation failed",
    431: "The request's header fields are too large",
    500: "Internal server error",
    501: "Transfer coding not supported",
}


def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, in the API's error body. ``mesg`` is gunicorn's
    detail (a header's name, the limit hit): kept after the message, JSON-escaped."""
    message = _MESSAGES.get(status_int, reason)
    if mesg:
        message = f"{message}: {mesg}"
    body = json.dumps({"statusCode": status_int,
                       "code": CODES.get(status_int, "BAD_REQUEST"),
                       "message": message}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


class _JsonErrors(Worker):
    """gunicorn has no setting for its error page: its workers call ``util.write_error``
    by name, so the worker process replaces that one function when it starts (before it
    accepts a connection). A test sends each refusal to the Procfile's web line, so a
    gunicorn upgrade that changes this fails the suite rather than a merchant."""

    def init_process(self) -> None:
        util.write_error = write_error
        super().init_process()


class ThreadWorker(_JsonErrors, _GunicornThreadWorker):
    """gunicorn's threaded worker (what ``--threads`` picks): the Procfile's web line."""


class PlainWorker(_JsonErrors, _GunicornSyncWorker):
    """gunicorn's default (sync) worker: ``deliverer run``'s web process. Not named
    ...SyncWorker: gunicorn swaps a class so named for its stock threaded one when
    ``--threads`` is above 1 (use ``ThreadWorker`` then)."""
