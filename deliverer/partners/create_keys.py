"""Idempotent endpoint creation: ``POST /endpoints`` repeated under the merchant's
Idempotency-Key (after a timeout, a lost answer) answers with the endpoint the first one
created, its secret included, instead of a 409 for its URL. A key is kept with the
endpoint for ``KEY_HOURS``, as payment APIs keep theirs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer.errors import Conflict
from deliverer.models import Endpoint

KEY_HOURS = 24


class CreateKeyReused(Conflict):
    message = "This idempotency key was already used for a different endpoint"


class CreateKeySpent(Conflict):
    message = "This idempotency key was already used for an endpoint that has since been deleted"


@dataclass(frozen=True)
class Asked:
    """What a create asked for, as it would be saved."""

    url: str
    description: str | None
    event_types: list[str]
    rate_limit: float | None
    enabled: bool


def created_under(session: Session, partner_id: str, key: str, asked: Asked,
                  now: datetime) -> Endpoint | None:
    """The endpoint an earlier create made under ``key`` within ``KEY_HOURS``, if it was
    asked for the same thing (``CreateKeyReused`` otherwise, ``CreateKeySpent`` once it
    is deleted). Called under the partner's endpoints lock, so a create racing its own
    retry finds what the first one committed."""
    endpoint = session.scalar(
        select(Endpoint).where(Endpoint.partner_id == partner_id, Endpoint.create_key == key,
                               Endpoint.created_at > now - timedelta(hours=KEY_HOURS))
        .order_by(Endpoint.created_at.desc()).limit(1))
    if endpoint is None:
        return None
    if (not endpoint.registered or endpoint.deleted_at is not None or endpoint.is_default
            or endpoint.signing_secret is None):
        # Deleted; or its row taken over since (the webhook URL's, which has no secret
        # of its own): not the endpoint this key made.
        raise CreateKeySpent()
    # Compared with what the first create asked, not with the endpoint now: a PATCH
    # since is the merchant's own change, and the repeated create is still the same one.
    if endpoint.create_asked != _fingerprint(asked):
        raise CreateKeyReused()
    return endpoint


def _fingerprint(asked: Asked) -> str:
    canonical = json.dumps([asked.url, asked.description, sorted(asked.event_types),
                            asked.rate_limit, asked.enabled], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def remember(endpoint: Endpoint, key: str | None, asked: Asked) -> None:
    endpoint.create_key = key
    endpoint.create_asked = _fingerprint(asked) if key is not None else None
