"""Alembic, driven from code: ``deliverer db upgrade`` and the tests use this."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import pool

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


def upgrade(settings: Settings | None = None,
            revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to ``revision``; returns the revisions before and after."""
    settings = settings or get_settings()
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    before = current_revision(settings)
    command.upgrade(alembic_config(settings), revision)
    return before, current_revision(settings)
