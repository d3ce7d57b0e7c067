"""Alembic, driven from code: ``deliverer db upgrade``, ``/readyz`` and the tests use this.

Migrations only add (nullable columns, tables, indexes), so the release before runs on
the schema of the one after: a rollback deploys the code, and its release step finds the
database ahead of it and leaves it as it is.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, pool

from deliverer.config import Settings, get_settings
from deliverer.db import checked_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    settings = settings or get_settings()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in passwords would otherwise be read as interpolation.
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at (None: no schema yet)."""
    engine = checked_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


@functools.cache
def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config)


def code_head() -> str:
    """The newest revision this release knows."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def is_known(revision: str) -> bool:
    """Whether this release has ``revision`` (one it does not is a later release's)."""
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def schema_problem(connection: Connection) -> str | None:
    """Why this release cannot run on the database's schema, if it cannot: the schema
    is behind (new code started before its release step, a 500 at the first query of a
    new column: an upgrade try). A schema ahead (a rollback) is fine."""
    current = MigrationContext.configure(connection).get_current_revision()
    if current == code_head() or (current is not None and not is_known(current)):
        return None
    return (f"database at {current or 'no schema'}, this release needs {code_head()}: "
            "run `deliverer db upgrade`")


class AheadOfCode(Exception):
    """The database is at a revision this release does not know: a later release's."""


def upgrade(settings: Settings | None = None,
            revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to ``revision``; returns the revisions before and after. Raises
    ``AheadOfCode`` (and changes nothing) when a later release migrated the database."""
    settings = settings or get_settings()
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    before = current_revision(settings)
    if before is not None and not is_known(before):
        raise AheadOfCode(before)
    command.upgrade(alembic_config(settings), revision)
    return before, current_revision(settings)
