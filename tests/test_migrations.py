"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from deliverer import migrate
from deliverer.db import get_database
from deliverer.models import Base
from tests.support.backend import scratch_database_url


def schema_differences(engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, Base.metadata)


def test_migrated_database_matches_the_models(settings):
    assert schema_differences(get_database().engine) == []


def test_session_database_is_at_head(settings):
    heads = ScriptDirectory.from_config(migrate.alembic_config(settings)).get_heads()
    assert len(heads) == 1, f"migration history has several heads: {heads}"
    with get_database().engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == heads[0]


def test_history_steps_up_down_and_up_again(settings, tmp_path):
    """On an empty database: each revision in turn (the comparison sees what is missing
    until head, so it is not vacuous), then down to nothing, then up to head again."""
    app_tables = set(Base.metadata.tables)
    with scratch_database_url(tmp_path) as url:
        scratch = settings.with_overrides(database_url=url, data_dir=tmp_path)
        config = migrate.alembic_config(scratch)
        revisions = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions())))
        engine = create_engine(url)
        try:
            for revision in revisions:
                command.upgrade(config, revision.revision)
                engine.dispose()
                with engine.connect() as conn:
                    assert MigrationContext.configure(conn).get_current_revision() == \
                        revision.revision
                if revision is not revisions[-1]:
                    assert schema_differences(engine) != []
            assert app_tables <= set(inspect(engine).get_table_names())
            assert schema_differences(engine) == []

            migrate.upgrade(scratch)  # at head already: a no-op, not an error

            command.downgrade(config, "base")
            engine.dispose()
            assert set(inspect(engine).get_table_names()) & app_tables == set()

            migrate.upgrade(scratch)
            engine.dispose()
            assert schema_differences(engine) == []
        finally:
            engine.dispose()
