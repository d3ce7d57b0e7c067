"""The operator CLI, run as a user would: the real ``deliverer`` script in a subprocess,
pointed at the test's database and broker through the environment."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import timedelta

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.errors import Unauthorized
from deliverer.migrate import alembic_config
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.notifications.audit import OPERATOR
from deliverer.partners.service import authenticate
from tests.operations.helpers import add_attempt, attempt_count, audit
from tests.support import helpers as h
from tests.support.cli import run_cli, run_cli_on_a_terminal
from tests.support.ports import closed_port
from tests.support.receiver import Receiver
from tests.support.rows import failed


@pytest.mark.unit  # no database or broker: the same on every backend
def test_help_lists_the_operator_commands(settings):
    out = run_cli(settings, "--help").stdout
    for command in ("db", "partner", "stats", "replay", "purge-attempts", "publish", "sweep"):
        assert command in out
    assert "rotate-key" in run_cli(settings, "partner", "--help").stdout


def test_partner_create_prints_the_key_once_and_rotate_key_replaces_it(settings):
    created = run_cli(settings, "partner", "create", "--name", "CLI Shop",
                      "--webhook-url", "https://cli-shop.example/hooks")
    body = json.loads(created.stdout)
    assert set(body) == {"id", "apiKey", "signingSecret"}
    assert "Store the API key now" in created.stderr
    with session_scope() as session:
        assert authenticate(session, body["apiKey"]).partner_id == body["id"]

    new_key = run_cli(settings, "partner", "rotate-key", body["id"]).stdout.strip()
    assert new_key and new_key != body["apiKey"]
    with session_scope() as session:
        assert authenticate(session, new_key).partner_id == body["id"]
        with pytest.raises(Unauthorized):
            authenticate(session, body["apiKey"])

    # Pasted in capitals, as the API reads UUIDs (the operator try: "Partner not found").
    upper = run_cli(settings, "partner", "rotate-key", body["id"].upper()).stdout.strip()
    with session_scope() as session:
        assert authenticate(session, upper).partner_id == body["id"]
    for address in ("not-an-address", "a" * 65 + "@example.com"):
        refused = run_cli(settings, "partner", "create", "--name", "Typo Shop",
                          "--alert-email", address, check=False)
        assert refused.returncode == 2 and "--alert-email" in refused.stderr
    missing = run_cli(settings, "partner", "rotate-key", "nope", check=False)
    assert missing.returncode == 1 and "Partner not found" in missing.stderr


def test_stats_json(settings, receiver: Receiver):
    url = receiver.url("/stats")
    shop = h.new_partner(settings, url)
    for _ in range(2):
        failed(shop.partner_id, url)
    failed(shop.partner_id, url, held=True)
    sent = h.insert_notification(shop.partner_id, url, next_attempt_at=None,
                                 status=NotificationStatus.SENT)
    h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                          next_attempt_at=utcnow() - timedelta(seconds=30),
                          scheduled_for=utcnow(), enqueued_at=utcnow())
    now = utcnow()
    add_attempt(sent, now - timedelta(minutes=5), success=True, url=url)
    add_attempt(sent, now - timedelta(minutes=6), success=False, url=url)
    add_attempt(sent, now - timedelta(minutes=7), success=False, url=url)
    add_attempt(sent, now - timedelta(hours=3), success=False, url=url)  # outside the window

    out = json.loads(run_cli(settings, "stats", "--json", "--window", "3600").stdout)
    assert out["notifications"]["byStatus"] == {"PENDING": 1, "SENT": 1, "FAILED": 3,
                                                "NOT_SENT": 0}
    assert out["notifications"]["held"] == 1 and out["notifications"]["exhausted"] == 2
    assert out["due"]["count"] == 1 and out["due"]["lagSeconds"] >= 29
    with session_scope() as session:
        public_id = session.scalar(select(Endpoint.public_id).where(Endpoint.url == url))
    assert out["endpoints"] == [{"partnerId": shop.partner_id, "endpointId": public_id,
                                 "url": url, "attempts": 3, "successes": 1,
                                 "successRate": 0.3333}]
    # The default endpoint: failing (as the FAILED rows were inserted), not marked so.
    assert out["endpointsByStatus"] == {"ACTIVE": 1, "FAILING": 0, "DISABLED": 0}
    assert set(out["brokerQueues"]) == {"deliver.first", "deliver.retry", "deliver.manual",
                                        "deliverer.maintenance"}
    assert all(isinstance(v, int) for v in out["brokerQueues"].values())


def test_stats_table(settings):
    out = run_cli(settings, "stats", "--no-broker").stdout
    assert "Notifications by status" in out and "Due now: 0" in out
    assert "no attempt in the window" in out and "Broker queues" not in out
    assert "Registered endpoints: 0 ACTIVE, 0 FAILING, 0 DISABLED" in out


@pytest.mark.backend_independent
def test_stats_with_the_broker_down_waits_one_try(settings):
    """It asked the fleet too after the depths had found the broker down: two more 2 s
    connection tries (6.7 s in a black-box try; README says one)."""
    started = time.monotonic()
    result = run_cli(settings, "stats",
                     CELERY_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0")
    elapsed = time.monotonic() - started
    assert "unreachable" in result.stdout and "Workers answering" not in result.stdout
    assert elapsed < 6.0, elapsed  # three tries took 6 s and more


def test_replay_with_a_progress_bar_then_the_worker_delivers(settings, worker,
                                                             receiver: Receiver):
    url = receiver.url("/replayed")
    shop = h.new_partner(settings, url)
    ids = [failed(shop.partner_id, url, created_ago=timedelta(minutes=9 - i)) for i in range(5)]
    other_url = receiver.url("/elsewhere")
    elsewhere = failed(shop.partner_id, other_url)

    dry = run_cli(settings, "replay", "--partner", shop.partner_id, "--endpoint", url,
                  "--dry-run")
    assert "5 FAILED notification(s) match." in dry.stdout
    assert all(h.notification(nid).status == NotificationStatus.FAILED for nid in ids)

    result = run_cli(settings, "replay", "--partner", shop.partner_id, "--endpoint", url,
                     "--since", (utcnow() - timedelta(hours=1)).isoformat(), "--yes")
    assert "replayed 5 of 5 notification(s)" in result.stdout
    assert "Replaying" in result.stderr  # the progress bar
    for nid in ids:
        h.wait_until(lambda nid=nid: h.sent(nid), message=f"{nid} delivered after replay")
        assert audit(nid) == [("retry", OPERATOR, None)]
    assert len(receiver.requests("/replayed")) == 5
    assert h.notification(elsewhere).status == NotificationStatus.FAILED


def test_replay_by_endpoint_id_and_what_a_disabled_endpoint_holds_back(settings,
                                                                        receiver: Receiver):
    # Taken for a URL, an ep_ id matched nothing, silently; a disabled endpoint's were
    # "skipped (changed meanwhile...)", exit 0 (the operator try).
    url = receiver.url("/by-id")
    shop = h.new_partner(settings, url)
    ids = [failed(shop.partner_id, url) for _ in range(2)]
    failed(shop.partner_id, receiver.url("/other"))
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.url == url))
        public_id = endpoint.public_id
        endpoint.disabled_at, endpoint.disabled_reason = utcnow(), "410 Gone"
    dry = run_cli(settings, "replay", "--partner", shop.partner_id, "--endpoint", public_id,
                  "--dry-run")
    assert "2 FAILED notification(s) match." in dry.stdout
    held = run_cli(settings, "replay", "--partner", shop.partner_id, "--endpoint", public_id,
                   "--yes", check=False)
    assert held.returncode == 1
    assert ("replayed 0 of 2 notification(s); 2 held back: their endpoint is disabled or "
            "webhooks are turned off") in held.stdout
    assert all(h.notification(nid).status == NotificationStatus.FAILED for nid in ids)
    unknown = run_cli(settings, "replay", "--partner", shop.partner_id, "--endpoint",
                      "ep_000000000000000000000000", check=False)
    assert unknown.returncode == 1 and "Endpoint not found" in unknown.stderr


def test_replay_of_nothing_asks_nothing(settings, receiver: Receiver):
    shop = h.new_partner(settings, receiver.url("/x"))
    failed(shop.partner_id, receiver.url("/x"))
    # Nothing matches (the --until filter): nothing to confirm, no terminal needed.
    result = run_cli(settings, "replay", "--partner", shop.partner_id, "--until",
                     "2001-01-01")
    assert "0 FAILED notification(s) match." in result.stdout


def test_replay_without_a_terminal_needs_yes(settings, receiver: Receiver):
    """A script or cron job (stdin not a terminal) cannot confirm: without --yes the
    replay is refused, not done unasked."""
    shop = h.new_partner(settings, receiver.url("/x"))
    nid = failed(shop.partner_id, receiver.url("/x"))
    result = run_cli(settings, "replay", "--partner", shop.partner_id, check=False)
    assert result.returncode == 1
    assert "1 FAILED notification(s) match." in result.stdout
    assert "pass --yes to replay without a prompt" in result.stderr
    assert h.notification(nid).status == NotificationStatus.FAILED
    assert audit(nid) == []


def test_replay_errors(settings):
    unknown = run_cli(settings, "replay", "--partner", "00000000-0000-0000-0000-000000000000",
                      check=False)
    assert unknown.returncode == 1 and "Partner not found" in unknown.stderr
    shop = h.new_partner(settings, None)
    bad_date = run_cli(settings, "replay", "--partner", shop.partner_id, "--since", "yesterday",
                       check=False)
    assert bad_date.returncode == 2 and "not an ISO 8601" in bad_date.stderr
    backwards = run_cli(settings, "replay", "--partner", shop.partner_id, "--since",
                        "2030-01-02", "--until", "2030-01-01", check=False)
    assert backwards.returncode == 2 and "--since must be before --until" in backwards.stderr
    polling = run_cli(settings, "partner", "create", "--name", "Poller", "--flow", "POLLING")
    refused = run_cli(settings, "replay", "--partner", json.loads(polling.stdout)["id"],
                      "--yes", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "Error: The partner is on the POLLING flow" in refused.stderr
    missing = run_cli(settings, "replay", check=False)
    assert missing.returncode == 2 and "--partner" in missing.stderr


def test_purge_attempts(settings):
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    now = utcnow()
    for days in (45, 40, 31):
        add_attempt(nid, now - timedelta(days=days))
    add_attempt(nid, now - timedelta(days=29))
    add_attempt(nid, now - timedelta(minutes=1))

    dry = run_cli(settings, "purge-attempts", "--older-than-days", "30", "--dry-run")
    assert "3 attempt(s) older than 30 day(s)" in dry.stdout
    assert attempt_count() == 5
    out = run_cli(settings, "purge-attempts", "--older-than-days", "30", "--batch-size", "2")
    assert "deleted 3 attempt(s) older than 30 day(s)" in out.stdout
    assert attempt_count() == 2
    # The default is DELIVERER_ATTEMPT_RETENTION_DAYS.
    out = run_cli(settings, "purge-attempts", DELIVERER_ATTEMPT_RETENTION_DAYS="10")
    assert "deleted 1 attempt(s) older than 10 day(s)" in out.stdout
    assert attempt_count() == 1
    assert h.notification(nid).latest_error_payload is not None  # the error survives


def test_purge_of_less_than_a_day_needs_yes(settings):
    """--older-than-days 0 deletes every attempt, today's failures included: like
    replay, not without --yes (or a yes on a terminal)."""
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    add_attempt(nid, utcnow() - timedelta(hours=2))
    refused = run_cli(settings, "purge-attempts", "--older-than-days", "0", check=False)
    assert refused.returncode == 1
    assert "pass --yes to purge without a prompt" in refused.stderr
    assert attempt_count() == 1
    dry = run_cli(settings, "purge-attempts", "--older-than-days", "0.05", "--dry-run")
    assert "1 attempt(s) older than 0.05 day(s)" in dry.stdout
    out = run_cli(settings, "purge-attempts", "--older-than-days", "0.05", "--yes")
    assert "deleted 1 attempt(s)" in out.stdout
    assert attempt_count() == 0


def test_on_a_terminal_replay_and_a_short_purge_ask_first(settings):
    shop = h.new_partner(settings, "http://127.0.0.1:9/hook")
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    add_attempt(nid, utcnow() - timedelta(hours=2))
    replay = run_cli_on_a_terminal(settings, "replay", "--partner", shop.partner_id,
                                   answer="n")
    assert "Replay 1 notification(s)? [y/N]" in replay.stdout
    assert replay.returncode == 1 and "Aborted" in replay.stderr
    purge = run_cli_on_a_terminal(settings, "purge-attempts", "--older-than-days", "0",
                                  answer="n")
    assert "Delete 1 attempt(s) older than 0 day(s)? [y/N]" in purge.stdout
    assert purge.returncode == 1 and "Aborted" in purge.stderr
    assert h.notification(nid).status == NotificationStatus.FAILED and audit(nid) == []
    assert attempt_count() == 1
    purge = run_cli_on_a_terminal(settings, "purge-attempts", "--older-than-days", "0",
                                  answer="y")
    assert purge.returncode == 0 and "deleted 1 attempt(s)" in purge.stdout
    assert attempt_count() == 0


@pytest.mark.unit  # usage errors, before any database or broker
@pytest.mark.parametrize("args", [
    ("purge-attempts", "--older-than-days", "1e7", "--dry-run"),
    ("purge-attempts", "--older-than-days", "-1"),
    ("purge-attempts", "--older-than-days", "nan", "--dry-run"),
    ("stats", "--window", "1e12", "--no-broker"),
    ("stats", "--window", "0", "--no-broker"),
])
def test_out_of_range_periods_are_usage_errors(settings, args):
    """Periods beyond 100 years made now - period overflow (a traceback)."""
    result = run_cli(settings, *args, check=False)
    assert result.returncode == 2 and "is not in the range" in result.stderr, result.stderr
    assert f"Invalid value for '{args[1]}'" in result.stderr  # the option, not a setting
    assert "Traceback" not in result.stderr


@pytest.mark.unit  # a settings error, before any database or broker
def test_an_out_of_range_retention_setting_is_an_error_not_a_traceback(settings):
    result = run_cli(settings, "purge-attempts", "--dry-run", check=False,
                     DELIVERER_ATTEMPT_RETENTION_DAYS="1e9")
    assert result.returncode == 2 and "DELIVERER_ATTEMPT_RETENTION_DAYS" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit  # usage errors, before any database or broker
@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_partner_create_refuses_an_empty_or_overlong_name(settings, name):
    result = run_cli(settings, "partner", "create", "--name", name, check=False)
    assert result.returncode == 2 and "--name" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


UNREACHABLE = "postgresql://deliverer:s3cret-pw@127.0.0.1:1/deliverer"  # nothing on port 1


# The same unreachable PostgreSQL whatever the session's backend.
@pytest.mark.unit
@pytest.mark.parametrize("args", [
    ("stats", "--no-broker"),
    ("partner", "create", "--name", "Shop"),
    ("replay", "--partner", "00000000-0000-0000-0000-000000000000", "--yes"),
    ("purge-attempts", "--dry-run"),
    ("db", "upgrade"),
])
def test_an_unreachable_database_is_one_line_not_a_traceback(settings, args):
    result = run_cli(settings, *args, check=False, DATABASE_URL=UNREACHABLE)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        "Error: cannot reach the database (DATABASE_URL=postgresql+psycopg2://"
        "deliverer:***@127.0.0.1:1/deliverer): "), result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.unit
@pytest.mark.parametrize(("url", "says"), [
    ("garbage", "Could not parse SQLAlchemy URL"),
    ("postgresql://deliverer:s3cret-pw@127.0.0.1:notaport/deliverer", "invalid literal"),
    ("mysql://deliverer:s3cret-pw@127.0.0.1/deliverer", "No module named"),
])
@pytest.mark.parametrize("args", [("stats", "--no-broker"), ("db", "upgrade"), ("sweep",)])
def test_a_database_url_that_cannot_be_used_is_one_line(settings, url, says, args):
    result = run_cli(settings, *args, check=False, DATABASE_URL=url)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: DATABASE_URL="), result.stderr
    assert " cannot be used: " in result.stderr and says in result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.unit
@pytest.mark.parametrize(("name", "value"), [("DELIVERER_TIME_SCALE", "fast"),
                                             ("DELIVERER_RETRY_LADDER", "2m,5m"),
                                             ("DELIVERER_PORTAL_URL", "hooks.example.com")])
def test_a_setting_that_cannot_be_used_is_one_line(settings, name, value):
    result = run_cli(settings, "stats", "--no-broker", check=False, **{name: value})
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"Error: {name} "), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_portal_url_checks_its_base_url(settings):
    result = run_cli(settings, "portal-url", "--base-url", "hooks.example.com", "Shop",
                     check=False)
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--base-url': must be an http(s) address" in result.stderr


@pytest.mark.unit  # an empty SQLite file of its own, whatever the session's backend
def test_db_upgrade_says_what_it_did(settings, tmp_path):
    """The release step on an empty database said 'database at head' (a black-box try):
    it says it created the schema, and the next run that there was nothing to do."""
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    empty = f"sqlite:///{tmp_path / 'release.db'}"
    first = run_cli(settings, "db", "upgrade", DATABASE_URL=empty)
    assert first.stdout.strip() == f"database created at {head}"
    again = run_cli(settings, "db", "upgrade", DATABASE_URL=empty)
    assert again.stdout.strip() == f"database already at {head}: nothing to do"
    # An upgrade try: asked for an earlier revision, it said "already at" the later one.
    back = run_cli(settings, "db", "upgrade", "--revision", "0013", DATABASE_URL=empty)
    assert back.stdout.strip() == (f"database at {head}, past the revision asked (0013): "
                                   "left as it is (db upgrade does not go back)")
    # A rollback's release step, on a later release's schema: said, exit 0 (an 80-line
    # traceback stopped the rollback of an upgrade try).
    with sqlite3.connect(tmp_path / "release.db") as raw:
        raw.execute("UPDATE alembic_version SET version_num = '0099'")
    ahead = run_cli(settings, "db", "upgrade", DATABASE_URL=empty)
    assert ahead.returncode == 0, ahead.stderr
    assert ahead.stdout.strip() == (f"database at 0099, newer than this release knows "
                                    f"(its newest: {head}): left as it is")
    assert "Traceback" not in ahead.stderr


@pytest.mark.unit  # an empty SQLite file of its own, whatever the session's backend
def test_a_database_without_the_schema_says_to_run_db_upgrade(settings, tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    for args in (("stats", "--no-broker"), ("purge-attempts", "--dry-run"),
                 ("partner", "create", "--name", "Shop")):
        result = run_cli(settings, *args, check=False, DATABASE_URL=empty)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"Error: the database has no schema "
                                        f"(DATABASE_URL={empty}): "), result.stderr
        assert "no such table" in result.stderr
        assert result.stderr.strip().endswith("run `deliverer db upgrade`")
        assert "Traceback" not in result.stderr
