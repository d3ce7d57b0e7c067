"""Operating deliverer: a sweep now, statistics, bulk replays, purging old attempts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import click

from deliverer.cli import ids
from deliverer.config import get_settings

# The longest periods the options accept: beyond, now - period is before year 1
# (OverflowError), and no attempt is that old anyway.
MAX_DAYS = 36500.0  # 100 years
MAX_WINDOW = MAX_DAYS * 86400

# Purging attempts younger than this needs --yes (or a yes on a terminal).
CONFIRM_PURGE_UNDER_DAYS = 1.0


@click.command("sweep")
def sweep() -> None:
    """Run one beat sweep now (enqueue what is due)."""
    from deliverer.celery_app import make_celery
    from deliverer.scheduling.tasks import sweep_due

    make_celery().set_default()
    click.echo(f"enqueued {sweep_due()} notification(s)")


def _confirm(question: str | Callable[[], str], action: str, *,
             why: str = "no terminal to confirm on") -> None:
    """Ask ``question`` on a terminal (no: abort). Without one (a script, cron,
    </dev/null) there is nobody to ask, and acting is not the default: refuse."""
    if not sys.stdin.isatty():
        raise click.ClickException(f"{why}: pass --yes to {action} without a prompt")
    click.confirm(question() if callable(question) else question, abort=True)


def _parse_when(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or date-time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 date or date-time: {value!r}",
                                 param_hint=name) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command("stats")
@click.option("--window", default=3600.0, show_default=True,
              type=click.FloatRange(min=1, max=MAX_WINDOW),
              help="Seconds of attempts the success rates cover.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="Endpoints listed (worst success rate first).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--no-broker", is_flag=True,
              help="Do not ask the broker for its queue depths and workers.")
def stats(window: float, limit: int, as_json: bool, no_broker: bool) -> None:
    """Queue depths per status, due retries, success rate by endpoint."""
    from deliverer.db import session_scope
    from deliverer.operations import stats as ops_stats

    celery_app = None
    if not no_broker:
        from deliverer.celery_app import make_celery

        celery_app = make_celery()
    with session_scope() as session:
        result = ops_stats.collect(session, window=timedelta(seconds=window),
                                   celery_app=celery_app, endpoint_limit=limit)
    fleet = None
    if celery_app is not None and any(v is not None for v in (result.broker or {}).values()):
        # As /readyz: the fleet is asked only of a broker that answered (its two more
        # connection tries made a down broker cost 6 s instead of 2).
        from deliverer.operations import fleet as ops_fleet

        fleet = ops_fleet.collect(celery_app)
    if as_json:
        click.echo(json.dumps({**result.as_dict(), "fleet": fleet and fleet.as_dict()},
                              indent=2))
        return
    click.echo("Notifications by status")
    for status, count in result.by_status.items():
        click.echo(f"  {status:<10} {count:>10}")
    click.echo(f"  of FAILED: {result.held} held behind their endpoint's head, "
               f"{result.exhausted} exhausted")
    click.echo(f"Due now: {result.due.count} (oldest overdue by {result.due.lag_seconds:.1f} s)")
    click.echo(f"Failing endpoints: {result.failing_endpoints}")
    click.echo("Registered endpoints: " + ", ".join(
        f"{count} {status}" for status, count in result.endpoint_statuses.items()))
    if result.broker is not None:
        click.echo("Broker queues")
        for queue, depth in result.broker.items():
            click.echo(f"  {queue:<24} {'unreachable' if depth is None else depth:>10}")
    if fleet is not None:
        workers = "unknown" if fleet.live_workers is None else fleet.live_workers
        click.echo(f"Workers answering a ping: {workers}")
        for queue, age in (fleet.oldest_unacked_seconds or {}).items():
            click.echo(f"  oldest unacknowledged in {queue:<24} "
                       f"{'unknown' if age is None else f'{age:.1f} s':>10}")
    click.echo(f"Success rate by endpoint, last {window:g} s")
    if not result.endpoints:
        click.echo("  no attempt in the window")
    for rate in result.endpoints:
        named = f"{rate.endpoint_id}, " if rate.endpoint_id else ""
        click.echo(f"  {rate.success_rate:>7.1%} {rate.successes:>7}/{rate.attempts:<7} "
                   f"{rate.url}  ({named}partner {rate.partner_id})")


@click.command("replay")
@click.option("--partner", "partner_id", required=True, help="Partner id.",
              callback=ids.partner_id)
@click.option("--endpoint", "endpoint_url", default=None,
              help="Only this endpoint: its id (ep_...) or its URL.")
@click.option("--since", default=None, help="Created at or after (ISO 8601, UTC by default).")
@click.option("--until", default=None, help="Created before (ISO 8601, UTC by default).")
@click.option("--include-not-sent", is_flag=True,
              help="Also NOT_SENT ones (ignored, or never sent for lack of a URL).")
@click.option("--rate", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Spread the attempts out: at most this many per second.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def replay(partner_id: str, endpoint_url: str | None, since: str | None, until: str | None,
           include_not_sent: bool, rate: float | None, dry_run: bool, yes: bool) -> None:
    """Bulk replay of a partner's FAILED notifications (a fresh cycle, like a manual retry,
    without the merchant's limits; recorded as operator retries)."""
    from deliverer.db import session_scope
    from deliverer.errors import DelivererError
    from deliverer.operations.replay import ReplayFilter, find_replayable
    from deliverer.operations.replay import replay as run_replay

    flt = ReplayFilter(partner_id=partner_id, endpoint_url=endpoint_url,
                       since=_parse_when(since, "--since"), until=_parse_when(until, "--until"),
                       include_not_sent=include_not_sent)
    if flt.since and flt.until and flt.since >= flt.until:
        raise click.BadParameter("--since must be before --until", param_hint="--since")
    try:
        with session_scope() as session:
            ids = find_replayable(session, flt)
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    count = len(ids)
    statuses = " or ".join(flt.statuses)
    click.echo(f"{count} {statuses} notification(s) match.")
    if dry_run or count == 0:
        return
    if not yes:
        _confirm(f"Replay {count} notification(s)?", "replay")

    from deliverer.celery_app import make_celery

    make_celery().set_default()  # the delivery messages go to the configured broker
    # Exactly the notifications counted and confirmed: not those failing since.
    with click.progressbar(length=count, label="Replaying", file=sys.stderr,
                           show_pos=True) as bar:
        result = run_replay(get_settings(), flt, ids=ids, rate=rate, progress=bar.update)
    others = result.skipped - result.held_back
    click.echo(f"replayed {result.replayed} of {result.matched} notification(s)"
               + (f"; {result.held_back} held back: their endpoint is disabled or webhooks "
                  "are turned off (enable it, or turn them on, then replay)"
                  if result.held_back else "")
               + (f"; {others} skipped (changed meanwhile, no URL, or the partner takes no "
                  "webhooks any more)" if others else ""))
    if result.held_back:
        sys.exit(1)  # some wait for the operator (enable, turn on): a script must see it


@click.command("purge-attempts")
@click.option("--older-than-days", type=click.FloatRange(min=0, max=MAX_DAYS), default=None,
              help="Retention in days [default: DELIVERER_ATTEMPT_RETENTION_DAYS, 90].")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1))
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True,
              help="Do not ask for confirmation (asked when keeping less than a day).")
def purge_attempts(older_than_days: float | None, batch_size: int, dry_run: bool,
                   yes: bool) -> None:
    """Delete attempts older than the retention period (beat also does it daily)."""
    from deliverer.operations.purge import count_purgeable
    from deliverer.operations.purge import purge_attempts as purge

    days = get_settings().attempt_retention_days if older_than_days is None else older_than_days
    # Click checks neither the environment's value nor NaN (which no comparison fails).
    if not 0 <= days <= MAX_DAYS:
        raise click.BadParameter(f"{days:g} is not in the range 0<=x<={MAX_DAYS:g}",
                                 param_hint="DELIVERER_ATTEMPT_RETENTION_DAYS"
                                 if older_than_days is None else "'--older-than-days'")
    older_than = timedelta(days=days)
    if dry_run:
        click.echo(f"{count_purgeable(older_than)} attempt(s) older than {days:g} day(s)")
        return
    if days < CONFIRM_PURGE_UNDER_DAYS and not yes:
        # Under a day is (nearly) the whole attempt history, today's failures included.
        _confirm(lambda: f"Delete {count_purgeable(older_than)} attempt(s) older than "
                         f"{days:g} day(s)?", "purge",
                 why=f"keeping only {days:g} day(s) deletes nearly every attempt")
    deleted = purge(older_than, batch_size=batch_size)
    click.echo(f"deleted {deleted} attempt(s) older than {days:g} day(s)")
