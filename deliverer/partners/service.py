"""Partners, their API keys and their webhook settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery.sending import netguard, signing
from deliverer.errors import DelivererError, InvalidPartnerFlow, PartnerNotFound, Unauthorized
from deliverer.models import (
    ApiKey,
    Partner,
    PartnerFlow,
    WebhookSettings,
    not_receiving_webhooks,
    utcnow,
)
from deliverer.models.in_list import in_list
from deliverer.partners import default_endpoint, keys
from deliverer.prepared import prepared


@dataclass(frozen=True)
class NewPartner:
    partner_id: str
    api_key: str  # shown once
    signing_secret: str


def create_partner(
    session: Session,
    settings: Settings,
    *,
    name: str,
    webhook_url: str | None,
    flow: str = PartnerFlow.WEBHOOK,
    alert_email: str | None = None,
) -> NewPartner:
    if webhook_url:
        netguard.validate_saved_url(webhook_url, allow_private=settings.allow_private_urls)
    partner = Partner(name=name, flow=PartnerFlow(flow), active=True, created_at=utcnow())
    session.add(partner)
    session.flush()
    secret = signing.generate_secret()
    session.add(WebhookSettings(partner_id=partner.id, url=webhook_url, enabled=True,
                                alert_email=alert_email, signing_secret=secret))
    if webhook_url:
        default_endpoint.make_default(session, partner.id, webhook_url)
    api_key = issue_key(session, partner.id)
    return NewPartner(partner.id, api_key, secret)


def issue_key(session: Session, partner_id: str) -> str:
    key = keys.generate_key()
    session.add(ApiKey(partner_id=partner_id, prefix=key[: keys.DISPLAY_PREFIX_LEN],
                       key_hash=keys.hash_key(key), created_at=utcnow()))
    session.flush()
    return key


def rotate_key(session: Session, partner_id: str) -> str:
    """Revoke every active key of the partner and issue a new one."""
    if session.get(Partner, partner_id) is None:
        raise PartnerNotFound()
    session.execute(
        update(ApiKey)
        .where(ApiKey.partner_id == partner_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return issue_key(session, partner_id)


@dataclass(frozen=True)
class Principal:
    partner_id: str
    api_key_id: str | None  # None: an operator (console, CLI), or the merchant's portal
    # partner_requests.source of its requests: "portal" for the merchant portal.
    source: str | None = None


# Built once: every API request runs it, and building the statement cost more CPU than
# executing it (SQLAlchemy's compiled cache spares only the compilation).
_KEY_LOOKUP = (
    select(ApiKey.id, ApiKey.key_hash, ApiKey.revoked_at, Partner.id.label("partner_id"),
           Partner.active, Partner.flow)
    .join(Partner, Partner.id == ApiKey.partner_id)
    .where(in_list(ApiKey.key_hash, "key_hashes"))
)
# The same, with the partners' rows locked FOR NO KEY UPDATE in the order of their ids
# (PostgreSQL locks the sorted rows), as audit.lock_partner and a manual-retry batch
# lock them: batches of overlapping partners queue instead of deadlocking.
_KEY_LOOKUP_LOCKING = prepared(_KEY_LOOKUP.order_by(Partner.id).with_for_update(
    key_share=True, of=Partner.id))


def key_hash(raw_key: str | None) -> str:
    """The lookup hash of a presented API key; seed 000's errors for a missing or
    malformed one, which need no database."""
    if raw_key is None or raw_key.strip() == "":
        raise Unauthorized("API Key is missing")
    raw_key = raw_key.strip()
    if not keys.looks_like_key(raw_key):
        raise Unauthorized("Invalid API Key format")
    return keys.hash_key(raw_key)


def authenticate(session: Session, raw_key: str | None) -> Principal:
    """Resolve an API key to its partner, with seed 000's exact errors."""
    [principal] = principals_for(session, [key_hash(raw_key)])
    if isinstance(principal, DelivererError):
        raise principal
    return principal


def principals_for(session: Session, key_hashes: Sequence[str], *,
                   lock_partners: bool = False) -> list[Principal | DelivererError]:
    """The partner of each key hash (one query for all), or the error to answer with.
    ``lock_partners``: the same statement locks the partners of the keys it finds, for
    the rest of the transaction (a manual-retry batch, which then counts their retries,
    spares a statement)."""
    found = {row.key_hash: row for row in session.connection().execute(
        _KEY_LOOKUP_LOCKING if lock_partners else _KEY_LOOKUP,
        {"key_hashes": sorted(set(key_hashes))})}
    return [_judge(found.get(wanted), wanted) for wanted in key_hashes]


def _judge(row: Any, wanted: str) -> Principal | DelivererError:
    # The index finds the row; compare_digest keeps the final comparison constant-time.
    if row is None or not keys.same_hash(row.key_hash, wanted) or row.revoked_at:
        return Unauthorized("Invalid API Key")
    if not_receiving_webhooks(row.active, row.flow) is not None:
        return InvalidPartnerFlow()
    return Principal(row.partner_id, row.id)
