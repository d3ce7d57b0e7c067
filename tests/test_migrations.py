"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError

from deliverer import migrate
from deliverer.db import get_database
from deliverer.models import Base
from tests.support.backend import BACKEND, scratch_database_url
from tests.support.waiting import wait_until, waiting_on_a_lock


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


@pytest.mark.skipif(BACKEND != "production", reason="PostgreSQL: SQLite has one writer")
def test_the_idempotency_index_is_built_while_events_are_written(settings, tmp_path):
    """0003's unique index on events is built CONCURRENTLY, outside the release's
    transaction: publishing goes on meanwhile. Before, it was built in the transaction
    that also added the column (ACCESS EXCLUSIVE on events) and ran every later
    migration, so events took no write until the whole release step committed.

    A transaction holding an old snapshot (and a read lock on partner_requests, which
    0004 alters) keeps the migration waiting; meanwhile another session takes the lock
    an INSERT into events takes."""
    with scratch_database_url(tmp_path) as url:
        scratch = settings.with_overrides(database_url=url, data_dir=tmp_path)
        command.upgrade(migrate.alembic_config(scratch), "0002")
        engine = create_engine(url)
        errors: list[BaseException] = []

        def release_step() -> None:
            try:
                migrate.upgrade(scratch)
            except BaseException as exc:  # reported below
                errors.append(exc)

        try:
            with engine.connect() as old, engine.connect() as writer:
                old.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                old.execute(text("SELECT count(*) FROM partner_requests"))
                migration = threading.Thread(target=release_step)
                migration.start()
                wait_until(lambda: waiting_on_a_lock(writer), 10, interval=0.05,
                           message="the migration to wait on its lock")
                try:
                    writer.execute(text("SET lock_timeout = '3s'"))
                    writer.execute(text("LOCK TABLE events IN ROW EXCLUSIVE MODE"))
                    writer.rollback()
                    blocked = None
                except OperationalError as exc:
                    blocked = exc
                old.rollback()  # the migration may go on
                migration.join(60)
            assert not migration.is_alive()
            assert not errors, errors
            assert blocked is None, f"writes to events were blocked: {blocked}"
            assert schema_differences(engine) == []
        finally:
            engine.dispose()


@pytest.mark.skipif(BACKEND != "production", reason="PostgreSQL: CONCURRENTLY")
def test_the_idempotency_migration_runs_again_after_its_index_build_failed(settings,
                                                                          tmp_path):
    """A concurrent build that fails (cancelled, a lost connection) leaves the column
    committed, the revision at 0002 and an INVALID index: the release step run again
    rebuilds the index instead of failing on the column or keeping the invalid index."""
    with scratch_database_url(tmp_path) as url:
        scratch = settings.with_overrides(database_url=url, data_dir=tmp_path)
        command.upgrade(migrate.alembic_config(scratch), "0002")
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("ALTER TABLE events ADD COLUMN idempotency_key VARCHAR(255)"))
                conn.execute(text("INSERT INTO partners VALUES ('p', 'P', 'WEBHOOK', true, now())"))
                for event_id in ("e1", "e2"):
                    conn.execute(text(
                        "INSERT INTO events (id, partner_id, type, reference, payload, body,"
                        " created_at, idempotency_key) VALUES"
                        " (:id, 'p', 't', 'r', '{}', '{}', now(), 'k')"), {"id": event_id})
                # The build fails (here: on duplicates) and leaves its index INVALID.
                with pytest.raises(IntegrityError, match="could not create unique index"):
                    conn.execute(text(
                        "CREATE UNIQUE INDEX CONCURRENTLY ix_events_partner_id_idempotency_key"
                        " ON events (partner_id, idempotency_key)"))
                conn.execute(text("UPDATE events SET idempotency_key = id"))

            migrate.upgrade(scratch)

            with engine.connect() as conn:
                assert conn.execute(text(
                    "SELECT indisvalid FROM pg_index WHERE indexrelid ="
                    " 'ix_events_partner_id_idempotency_key'::regclass")).scalar() is True
            assert schema_differences(engine) == []
        finally:
            engine.dispose()


def test_0008_makes_each_webhook_url_a_default_endpoint(settings, tmp_path):
    """Data written by the schema before registered endpoints (0007): a partner whose URL
    already had deliveries, one whose URL had none yet, one without a URL. After 0008
    each URL is its partner's default endpoint, registered for every event, numbering
    goes on where it was, and the next publish fans out to exactly that endpoint."""
    from sqlalchemy.orm import Session

    from deliverer.publishing.service import record_event

    with scratch_database_url(tmp_path) as url:
        scratch = settings.with_overrides(database_url=url, data_dir=tmp_path)
        config = migrate.alembic_config(scratch)
        command.upgrade(config, "0007")
        engine = create_engine(url)
        now = "2026-12-01 10:00:00"
        try:
            with engine.begin() as conn:
                for pid, hook in (("p-used", "http://127.0.0.1:9/used"),
                                  ("p-new", "http://127.0.0.1:9/new"), ("p-none", None)):
                    conn.execute(text(
                        "INSERT INTO partners (id, name, flow, active, created_at) "
                        "VALUES (:id, :id, 'WEBHOOK', true, :now)"), {"id": pid, "now": now})
                    conn.execute(text(
                        "INSERT INTO webhook_settings (partner_id, url, enabled, "
                        "signing_secret, updated_at) VALUES (:id, :url, true, "
                        "'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', :now)"),
                        {"id": pid, "url": hook, "now": now})
                conn.execute(text(
                    "INSERT INTO endpoints (partner_id, url, last_sequence, created_at, "
                    "consecutive_failures, draining) VALUES "
                    "('p-used', 'http://127.0.0.1:9/used', 7, :now, 0, false), "
                    "('p-used', 'http://127.0.0.1:9/callback', 2, :now, 0, false)"),
                    {"now": now})
            command.upgrade(config, "0008")
            with engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT partner_id, url, registered, is_default, last_sequence, "
                    "public_id, event_types FROM endpoints ORDER BY partner_id, url")).all()
            assert [(r[0], r[1], bool(r[2]), bool(r[3]), r[4]) for r in rows] == [
                ("p-new", "http://127.0.0.1:9/new", True, True, 0),
                ("p-used", "http://127.0.0.1:9/callback", False, False, 2),
                ("p-used", "http://127.0.0.1:9/used", True, True, 7),
            ]
            assert all(r[5].startswith("ep_") and len(r[5]) == 27 for r in rows)
            assert len({r[5] for r in rows}) == 3
            assert all(r[6] is None for r in rows)  # NULL: subscribed to every type
            command.upgrade(config, "head")  # what publishing reads now
            assert schema_differences(engine) == []
            with Session(engine) as session:  # rolled back: nothing is enqueued
                published = record_event(session, scratch, partner_id="p-used",
                                         type="invoice.settled", reference="INV-1",
                                         payload={"invoice_id": 1})
                assert [(d.sequence, d.endpoint_id) for d in published.deliveries] == [
                    (8, next(r[5] for r in rows if r[1].endswith("/used")))]
                session.rollback()
        finally:
            engine.dispose()
