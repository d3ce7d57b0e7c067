"""The request owns its transaction: one session per request, opened lazily, committed
(or rolled back) here and nowhere else in the API.

A request that succeeds commits after its view has returned; the messages that services
registered with ``deliverer.db.on_commit`` go out inside that commit. One that fails
rolls back, and a refused merchant request (an error carrying a ``Refusal``) is then
kept on the audit trail in a transaction of its own. The only commit before the answer
is ``commit_then``'s, for the views that wait for a worker's outcome and for the
portal's sign-in (its attempt counts for the limit before the link is judged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, Response, g
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.errors import answer
from deliverer.db import get_database
from deliverer.errors import DelivererError

log = logging.getLogger(__name__)

T = TypeVar("T")


def get_session() -> Session:
    session: Session | None = g.get("db_session")
    if session is None:
        session = get_database().sessionmaker()
        g.db_session = session
    return session


def commit_then(work: Callable[[], T]) -> T:
    """Commit the request's transaction now, then run ``work``: for a view that waits for
    what a worker does with the rows it just wrote (a resend, an operator's retry). The
    worker must see them, and the message that sends it goes out with this commit."""
    get_session().commit()
    return work()


def roll_back_refused(error: Exception) -> None:
    """Undo the request's changes and keep a service's refusal, if any, on the audit
    trail: for a view that answers a refusal itself (a flash and a redirect, whose 3xx
    would otherwise commit what the request did before it was refused)."""
    session = get_session()
    session.rollback()
    if isinstance(error, DelivererError):
        error.keep_refusal(session)


def keep_after_rollback(work: Callable[[Session], None]) -> None:
    """Do ``work`` again after a 4xx's rollback, and commit it: for what a page has done
    whatever its status (the flash it showed, which would otherwise come back)."""
    g.setdefault("kept_after_rollback", []).append(work)


def init_app(app: Flask) -> None:
    @app.after_request
    def _commit(response: Response) -> Response:
        session: Session | None = g.get("db_session")
        if session is None:
            return response
        refused: DelivererError | None = g.pop("refused", None)
        try:
            if response.status_code >= 400:
                session.rollback()
                kept: list[Callable[[Session], None]] = g.pop("kept_after_rollback", [])
                if refused is None and not kept:
                    return response
                for work in kept:
                    work(session)
                if refused is not None:
                    refused.keep_refusal(session)
            # Enqueues registered with deliverer.db.on_commit run inside this commit.
            session.commit()
        except DBAPIError:
            # The database went away between the work and the commit: nothing was
            # stored, and the client is told to try again, not a bare 500 (in the shape
            # of the path: a page, seed 002's body, the API's).
            log.warning("commit failed", exc_info=True)
            session.rollback()
            return answer(503, "SERVICE_UNAVAILABLE",
                          "Service temporarily unavailable. Try again shortly.",
                          headers={"Retry-After": "5"})
        return response

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.close()
