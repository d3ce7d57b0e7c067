"""The partner's webhook-settings URL as its *default* endpoint: which row that is when
the URL changes (``make_default``), for the settings and for a new partner, and which it
is now (``default_endpoint``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from deliverer.errors import Conflict
from deliverer.models import Endpoint, utcnow
from deliverer.models.endpoint import DISABLED_BY_MERCHANT, OWN_CONFIGURATION
from deliverer.partners import registered, relocation
from deliverer.partners.endpoints import hold_publishes

URL_IS_AN_ENDPOINT = ("This URL is your endpoint {id}, with subscriptions and a secret of its "
                      "own: delete it first, or keep receiving there through it")


def _default_of(partner_id: str) -> Select[Endpoint]:
    return select(Endpoint).where(Endpoint.partner_id == partner_id,
                                  Endpoint.is_default.is_(True))


def default_endpoint(session: Session, partner_id: str) -> Endpoint | None:
    """The endpoint of the webhook-settings URL (None: no URL)."""
    return session.scalar(_default_of(partner_id))


def make_default(session: Session, partner_id: str, url: str | None,
                 now: datetime | None = None, *, limit: int | None = None) -> None:
    """The webhook-settings URL is now ``url``. The default endpoint moves there (its id
    and queue with it) unless ``url`` has a row already (an earlier webhook URL, a
    callback URL, a deleted endpoint: sequence numbers of its own) or the default has a
    secret of its own (an endpoint the merchant registered); then that row becomes the
    default endpoint, subscribed as the previous default was and signed with the
    settings' secret, and the previous one is no longer registered (what it still holds
    is sent there). The URL of another registered endpoint is refused: that endpoint has
    subscriptions and a secret of its own, which the webhook URL has not. ``limit``: the
    most registered endpoints the partner may have (``TOO_MANY`` past it)."""
    now = now or utcnow()
    hold_publishes(session, partner_id)  # after the settings row, as registered locks
    previous = session.scalar(_default_of(partner_id).with_for_update())
    if previous is not None and previous.url == url:
        return
    row = relocation.row_for_url(session, partner_id, url) if url is not None else None
    if row is not None and row.registered:
        raise Conflict(URL_IS_AN_ENDPOINT.format(id=row.public_id))
    if url is not None and row is None and previous is not None \
            and previous.signing_secret is None:
        # The default endpoint moves, as PATCHing its URL moves it: a merchant whose URL
        # changed wants its queue retried there, not at the URL it left.
        relocation.relocate(session, previous, url)
        session.flush()
        return
    if limit is not None and url is not None:
        # A new default beside one the merchant registered (or none) is one more.
        leaves = previous is not None and previous.signing_secret is None
        if registered.count_registered(session, partner_id) + 1 - leaves > limit:
            raise Conflict(registered.TOO_MANY.format(limit=limit))
    carried: dict[str, Any] = {"event_types": None, "description": None}
    if previous is not None:
        carried = {"event_types": previous.event_types, "description": previous.description}
        previous.is_default = False
        # One the merchant registered itself (it has a secret of its own) stays.
        previous.registered = previous.signing_secret is not None
    if url is None:
        session.flush()
        return
    if row is None:
        row = Endpoint(partner_id=partner_id, url=url, last_sequence=0, created_at=now,
                       consecutive_failures=0)
        session.add(row)
    # An old webhook URL, a callback URL or a deleted endpoint: nothing of what it was
    # (a secret, a limit, the merchant's disabling) carries over to the webhook URL.
    row.event_types = carried["event_types"]
    row.description = carried["description"]
    row.deleted_at = None
    for name in OWN_CONFIGURATION:
        setattr(row, name, None)
    if row.disabled_reason == DISABLED_BY_MERCHANT:
        row.disabled_at = row.disabled_reason = None
    row.registered = True
    row.is_default = True
    session.flush()
