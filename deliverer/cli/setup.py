"""Setting deliverer up: its schema, partners, a test publish, everything in one process."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

from deliverer.cli import ids
from deliverer.config import base_url, get_settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the Alembic migrations (the Procfile's release step)."""
    from deliverer.migrate import AheadOfCode, code_head, upgrade

    try:
        before, after = upgrade(get_settings(), revision)
    except AheadOfCode as ahead:
        # A rollback's release step: the schema of a later release, which this one runs
        # on (migrations only add). Said, and not an error, or the rollback stops here.
        click.echo(f"database at {ahead}, newer than this release knows (its newest: "
                   f"{code_head()}): left as it is")
        return
    if before == after and revision not in ("head", after):
        click.echo(f"database at {after}, past the revision asked ({revision}): left as "
                   "it is (db upgrade does not go back)")
    elif before == after:
        click.echo(f"database already at {after}: nothing to do")
    elif before is None:
        click.echo(f"database created at {after}")
    else:
        click.echo(f"database upgraded from {before} to {after}")


@click.group()
def partner() -> None:
    """Partners and their API keys."""


def _partner_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be empty")
    if len(value) > 200:  # the column's size, and the internal API's limit
        raise click.BadParameter("at most 200 characters")
    return value


def _alert_email(_ctx: click.Context, _param: click.Parameter, value: str | None
                 ) -> str | None:
    # Checked as the API checks it: unchecked, a mistyped address was saved and found
    # only when the first alert could not be mailed (the operator try).
    from deliverer.alerts.addresses import address_problem

    problem = address_problem(value) if value is not None else None
    if problem is not None:
        raise click.BadParameter(problem)
    return value


@partner.command("create")
@click.option("--name", required=True, callback=_partner_name)
@click.option("--webhook-url", default=None)
@click.option("--alert-email", default=None, callback=_alert_email)
@click.option("--flow", type=click.Choice(["WEBHOOK", "POLLING"]), default="WEBHOOK")
@click.option("--output", type=click.Choice(["json", "shell"]), default="json",
              help="shell: PARTNER_ID=... lines, for eval \"$(deliverer partner create ...)\".")
def partner_create(name: str, webhook_url: str | None, alert_email: str | None,
                   flow: str, output: str) -> None:
    """Create a partner; prints its API key, which is not shown again."""
    from deliverer.db import session_scope
    from deliverer.errors import DelivererError
    from deliverer.partners.service import create_partner

    try:
        with session_scope() as session:
            created = create_partner(session, get_settings(), name=name,
                                     webhook_url=webhook_url, alert_email=alert_email, flow=flow)
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    if output == "shell":
        for variable, value in (("PARTNER_ID", created.partner_id),
                                ("PARTNER_API_KEY", created.api_key),
                                ("PARTNER_SIGNING_SECRET", created.signing_secret)):
            click.echo(f"{variable}={shlex.quote(value)}")
    else:
        click.echo(json.dumps({"id": created.partner_id, "apiKey": created.api_key,
                               "signingSecret": created.signing_secret}, indent=2))
    click.echo("Store the API key now: it is kept only as a hash.", err=True)


@partner.command("rotate-key")
@click.argument("partner_id", callback=ids.partner_id)
def partner_rotate_key(partner_id: str) -> None:
    """Revoke the partner's API keys and print a new one."""
    from deliverer.db import session_scope
    from deliverer.errors import DelivererError
    from deliverer.partners.service import rotate_key

    try:
        with session_scope() as session:
            key = rotate_key(session, partner_id)
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(key)


@click.command("publish")
@click.argument("partner_id", callback=ids.partner_id)
@click.argument("event_type")
@click.argument("reference")
@click.option("--payload", default="{}", help="JSON object")
@click.option("--callback-url", default=None)
def publish(partner_id: str, event_type: str, reference: str, payload: str,
            callback_url: str | None) -> None:
    """Publish an event for a partner."""
    from deliverer import publish_event
    from deliverer.errors import DelivererError

    try:
        data: Any = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from exc
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    try:
        published = publish_event(partner_id, event_type, reference, data, callback_url)
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    # The first notification (the default endpoint's) as before, then every endpoint the
    # event fanned out to.
    click.echo(json.dumps({
        "eventId": published.event_id, "notificationId": published.notification_id,
        "status": published.status, "sequence": published.sequence,
        "deliveries": [{"endpointId": d.endpoint_id, "notificationId": d.notification_id,
                        "sequence": d.sequence, "status": d.status}
                       for d in published.deliveries]}))


def _base_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return base_url(value, "--base-url")
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--base-url ")) from exc


@click.command("portal-url")
@click.argument("partner", callback=ids.partner_id)
@click.option("--read-only", is_flag=True, help="A session that can look, not act.")
@click.option("--base-url", default=None, callback=_base_url,
              help="The API's public address (default: DELIVERER_PORTAL_URL, else "
                   "http://127.0.0.1:PORT, as `deliverer run` listens).")
@click.option("--port", default=5000, show_default=True, envvar="PORT", show_envvar=True,
              type=click.IntRange(1, 65535),
              help="The port of the default address, without --base-url or "
                   "DELIVERER_PORTAL_URL.")
def portal_url(partner: str, read_only: bool, base_url: str | None, port: int) -> None:
    """Print a single-use link into a partner's merchant portal (PARTNER: its id, or its
    exact name: the newest partner of that name)."""
    from deliverer.db import session_scope
    from deliverer.errors import DelivererError
    from deliverer.portal.sessions import (
        ISSUED_BY_ADMIN,
        issue_link,
        link_url,
        resolve_partner,
    )

    settings = get_settings()
    try:
        with session_scope() as session:
            partner_id, named = resolve_partner(session, partner)
            link = issue_link(session, settings, partner_id, read_only=read_only,
                              issued_by=ISSUED_BY_ADMIN)
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    if named > 1:
        click.echo(f"{named} partners are named {partner!r}: this link is for the newest, "
                   f"{partner_id}.", err=True)
    base = base_url or settings.portal_base_url or f"http://127.0.0.1:{port}"
    click.echo(link_url(base, link.token))
    click.echo(f"Open it once, by {link.token_expires_at:%Y-%m-%d %H:%M:%S} UTC; the session "
               f"lasts until {link.expires_at:%Y-%m-%d %H:%M:%S} UTC.", err=True)


@click.command("run")
@click.option("--port", default=5000, show_default=True, envvar="PORT", show_envvar=True,
              type=click.IntRange(1, 65535), help="Where the API listens.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1),
              help="The worker's threads.")
@click.option("--demo/--no-demo", default=False, help="Play the demo once everything is up.")
@click.option("--exit-after-demo", is_flag=True, help="Stop everything when the demo ends.")
def run(port: int, demo: bool, exit_after_demo: bool, concurrency: int) -> None:
    """API, worker and beat together on this machine (the embedded default)."""
    from deliverer.devserver import StartFailed, run_all

    try:
        status = run_all(port=port, demo=demo, exit_after_demo=exit_after_demo,
                         concurrency=concurrency)
    except StartFailed as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)
