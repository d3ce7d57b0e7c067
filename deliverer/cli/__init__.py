"""The operator CLI: ``deliverer --help``. Each command is the transaction owner of what
it does (``deliverer.db.session_scope``); the commands are grouped by what they are for:
setting up (``setup``) and operating (``operations``)."""

from __future__ import annotations

from typing import Any

import click

from deliverer.cli import endpoints, operations, setup
from deliverer.config import get_settings, masked_url


def database_error_message(exc: Exception) -> str:
    """One line for an operator, instead of a traceback: what failed and what to do."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    where = f"DATABASE_URL={masked_url(get_settings().database_url)}"
    # SQLite says so in words, PostgreSQL with SQLSTATE 42P01 (undefined_table).
    if "no such table" in first or getattr(orig, "pgcode", None) == "42P01":
        return (f"the database has no schema ({where}): {first}; "
                "run `deliverer db upgrade`")
    if isinstance(exc, OperationalError | InterfaceError):
        return f"cannot reach the database ({where}): {first}"
    return f"database error ({where}): {first}"


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # An unreachable database, or one without the schema, is the operator's to
            # fix: a sentence, not a traceback. (Imported here: --help stays fast.)
            from sqlalchemy.exc import DBAPIError

            from deliverer.config import ConfigError
            from deliverer.db import BadDatabaseUrl

            if isinstance(exc, DBAPIError):
                raise click.ClickException(database_error_message(exc)) from exc
            if isinstance(exc, BadDatabaseUrl | ConfigError):
                raise click.ClickException(str(exc)) from exc
            raise


@click.group(cls=_Main)
def main() -> None:
    """deliverer: webhook delivery pipeline."""


for command in (setup.db, setup.partner, endpoints.endpoint, setup.publish, setup.portal_url,
                setup.run, operations.sweep, operations.stats, operations.replay,
                operations.purge_attempts):
    main.add_command(command)
