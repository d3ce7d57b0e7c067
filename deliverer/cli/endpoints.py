"""A partner's registered endpoints from the command line: ``deliverer endpoint add`` and
``list`` (what the partner API's ``/endpoints`` does, for operators and the demo), and
``disable`` / ``enable`` (an operator stopping one that hammers its merchant's server)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from deliverer.cli import ids
from deliverer.config import get_settings
from deliverer.partners.registered import MAX_RATE_LIMIT, MIN_RATE_LIMIT

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _check_partner(session: Session, partner_id: str) -> None:
    from deliverer.errors import PartnerNotFound
    from deliverer.models import Partner

    if session.get(Partner, partner_id) is None:
        raise PartnerNotFound()


@click.group("endpoint")
def endpoint() -> None:
    """A partner's registered endpoints (its events fan out to them)."""


@endpoint.command("add")
@click.argument("partner_id", callback=ids.partner_id)
@click.argument("url")
@click.option("--event-type", "event_types", multiple=True,
              help="A catalog name, a prefix such as 'transaction.*', or '*' (repeatable; "
                   "default: '*').")
@click.option("--description", default=None)
@click.option("--rate-limit", type=click.FloatRange(min=MIN_RATE_LIMIT, max=MAX_RATE_LIMIT),
              default=None, help="Deliveries per second.")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
def endpoint_add(partner_id: str, url: str, event_types: tuple[str, ...],
                 description: str | None, rate_limit: float | None, disabled: bool) -> None:
    """Register URL for PARTNER_ID; prints it with its signing secret, shown only now."""
    from deliverer.db import session_scope
    from deliverer.errors import DelivererError
    from deliverer.partners import registered

    try:
        with session_scope() as session:
            _check_partner(session, partner_id)
            created = registered.create(session, get_settings(), partner_id, url=url,
                                        description=description,
                                        event_types=list(event_types) or None,
                                        enabled=not disabled, rate_limit=rate_limit)
            shown = {"id": created.public_id, "url": created.url,
                     "description": created.description,
                     "eventTypes": created.subscriptions, "enabled": not disabled,
                     "rateLimit": created.rate_limit,
                     "signingSecret": created.signing_secret}
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(json.dumps(shown, indent=2))
    click.echo("Store the signing secret now: it is not shown again.", err=True)


@endpoint.command("list")
@click.argument("partner_id", callback=ids.partner_id)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def endpoint_list(partner_id: str, as_json: bool) -> None:
    """PARTNER_ID's endpoints: id, status, subscriptions, URL (* marks the default)."""
    from deliverer.db import session_scope
    from deliverer.errors import DelivererError
    from deliverer.partners import registered

    try:
        with session_scope() as session:
            _check_partner(session, partner_id)
            rows: list[dict[str, Any]] = [
                {"id": e.public_id, "url": e.url, "description": e.description,
                 "eventTypes": e.subscriptions,
                 "status": e.status.value, "isDefault": e.is_default,
                 "rateLimit": e.rate_limit, "lastSequence": e.last_sequence}
                for e in registered.listed(session, partner_id)]
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "*" if row["isDefault"] else " "
        described = f"  ({row['description']})" if row["description"] else ""
        click.echo(f"{mark} {row['id']}  {row['status']:<8}  "
                   f"{','.join(row['eventTypes']):<30}  {row['url']}{described}")


@endpoint.command("disable")
@click.argument("endpoint_id")
@click.option("--reason", default=None, help="Said to the merchant (API, portal, alerts).")
def endpoint_disable(endpoint_id: str, reason: str | None) -> None:
    """Stop sending to ENDPOINT_ID (ep_...): what it is sent is held, new events to it are
    NOT_SENT, as when the merchant disables it; a settings save does not undo it."""
    _set_enabled(endpoint_id, False, reason=reason)


@endpoint.command("enable")
@click.argument("endpoint_id")
@click.option("--force", is_flag=True, help="Even one its merchant disabled.")
def endpoint_enable(endpoint_id: str, force: bool) -> None:
    """Send to ENDPOINT_ID (ep_...) again: what it holds is released in sequence order."""
    _set_enabled(endpoint_id, True, force=force)


def _set_enabled(public_id: str, enabled: bool, *, reason: str | None = None,
                 force: bool = False) -> None:
    from deliverer.db import session_scope
    from deliverer.errors import DelivererError
    from deliverer.operations.endpoints import set_enabled

    try:
        with session_scope() as session:
            changed = set_enabled(session, get_settings(), public_id, enabled,
                                  reason=reason, force=force)
            said = ("is " + ("enabled" if enabled else "disabled") + " already" if changed
                    is None else f"disabled ({changed.disabled_reason})" if not enabled
                    else "enabled: what it holds is released in sequence order")
    except DelivererError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{public_id} {said}.")
