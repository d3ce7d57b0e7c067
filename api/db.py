"""One session and one transaction per request, opened lazily and closed in one place."""

from __future__ import annotations

import logging

from flask import Flask, Response, g
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.errors import error_response
from deliverer.db import get_database

log = logging.getLogger(__name__)


def get_session() -> Session:
    session: Session | None = g.get("db_session")
    if session is None:
        session = get_database().sessionmaker()
        g.db_session = session
    return session


def init_app(app: Flask) -> None:
    @app.after_request
    def _commit(response: Response) -> Response:
        session: Session | None = g.get("db_session")
        if session is not None:
            if response.status_code < 400:
                # Enqueues registered with deliverer.db.on_commit run inside this commit.
                try:
                    session.commit()
                except DBAPIError:
                    # The database went away between the work and the commit: nothing was
                    # stored, and the client is told to try again, not a bare 500.
                    log.warning("commit failed", exc_info=True)
                    session.rollback()
                    return error_response(503, "SERVICE_UNAVAILABLE",
                                          "Service temporarily unavailable. Try again shortly.",
                                          headers={"Retry-After": "5"})
            else:
                session.rollback()
        return response

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.close()
