"""Getting into the merchant portal: single-use links, sessions scoped to one partner.

A link (``issue_link``) carries a random token that works once, within
``portal_link_seconds``: opening it (``exchange``) spends the token and starts a session,
named by a second random value that only the browser's cookie holds. Both are stored as
SHA-256 hashes, so the table leaks neither. A session ends at ``portal_session_hours``
after its link was issued, when the merchant signs out, or when every session of the
partner is signed out at once (``sign_out_all``). Opening links is rate-limited per
client address (the failed attempts of the last minute): each opening is first admitted
(``admit``: an attempt row, failed until the link proves good), and that is committed
before the link is judged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.errors import DelivererError, InvalidPartnerFlow, PartnerNotFound
from deliverer.models import (
    ApiKey,
    Partner,
    PortalSession,
    PortalSignIn,
    not_receiving_webhooks,
    utcnow,
)
from deliverer.notifications.audit import RATE_WINDOW, enforce_rate
from deliverer.partners.service import Principal

ENTER_PATH = "/portal/enter"  # where links lead (api.views.portal.auth.enter)
SOURCE = "portal"  # partner_requests.source of what merchants do in the portal
ISSUED_BY_ADMIN = "admin"
ISSUED_BY_API_KEY = "api_key"
# Sign-in rows older than this are of no use to the rate limit.
SIGN_IN_KEPT = timedelta(hours=1)
# The class (first key) of the advisory locks that make one address's openings take
# turns at the limit (partners.endpoints.PUBLISH_LOCKS is another).
SIGN_IN_LOCKS = 7302


class LinkRefused(DelivererError):
    """A portal link that is unknown, already used, signed out or expired (its attempt,
    admitted and committed before, stays failed)."""

    status_code = 403
    code = "FORBIDDEN"
    message = ("This portal link cannot be used: it was already used, has expired, or was "
               "signed out. Ask for a new link.")


@dataclass(frozen=True)
class IssuedLink:
    token: str  # shown once, in the link
    token_expires_at: datetime
    expires_at: datetime
    read_only: bool


def link_url(base_url: str, token: str) -> str:
    """The link a merchant opens: ``base_url`` is the portal's public address."""
    return f"{base_url.rstrip('/')}{ENTER_PATH}?{urlencode({'token': token})}"


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def issue_link(session: Session, settings: Settings, partner_id: str, *, read_only: bool,
               issued_by: str, api_key_id: str | None = None,
               now: datetime | None = None) -> IssuedLink:
    now = now or utcnow()
    partner = session.get(Partner, partner_id)
    if partner is None:
        raise PartnerNotFound()
    reason = not_receiving_webhooks(partner.active, partner.flow)
    if reason is not None:
        raise InvalidPartnerFlow(reason)
    # Rows of sessions long over are of no use: each new link clears its partner's.
    session.execute(delete(PortalSession).where(PortalSession.partner_id == partner_id,
                                                PortalSession.expires_at < now - SIGN_IN_KEPT))
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(hours=settings.portal_session_hours)
    token_expires_at = min(expires_at, now + timedelta(seconds=settings.portal_link_seconds))
    session.add(PortalSession(
        partner_id=partner_id, token_hash=_hash(token), read_only=read_only,
        issued_by=issued_by, api_key_id=api_key_id, created_at=now,
        token_expires_at=token_expires_at, expires_at=expires_at))
    session.flush()
    return IssuedLink(token, token_expires_at, expires_at, read_only)


def resolve_partner(session: Session, id_or_name: str) -> tuple[str, int]:
    """A partner's id from its id or its exact name (the CLI's way to name the demo's
    partner, which each demo run creates again): the newest of that name, and how many
    have it. PartnerNotFound when none has."""
    if session.get(Partner, id_or_name) is not None:
        return id_or_name, 1
    ids = session.scalars(select(Partner.id).where(Partner.name == id_or_name)
                          .order_by(Partner.created_at.desc(), Partner.id.desc())).all()
    if not ids:
        raise PartnerNotFound()
    return ids[0], len(ids)


def admit(session: Session, settings: Settings, remote_addr: str,
          now: datetime | None = None) -> int:
    """An opening of a link from ``remote_addr``: TooManyRequests past the address's
    limit, else the id of its attempt row, failed until ``exchange`` says otherwise. The
    caller commits it before the link is judged: counted once the request had rolled
    back, fifty guesses at once all read the same count (26 got past a limit of 10 in a
    black-box try). The address's openings take turns here (PostgreSQL: an advisory
    lock until the commit; SQLite's writers take turns anyway)."""
    now = now or utcnow()
    remote_addr = (remote_addr or "unknown")[:64]
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:locks, hashtext(:addr))"),
                        {"locks": SIGN_IN_LOCKS, "addr": remote_addr})
    session.execute(delete(PortalSignIn).where(PortalSignIn.remote_addr == remote_addr,
                                               PortalSignIn.created_at < now - SIGN_IN_KEPT))
    # Failures only: what guessing tokens makes. Behind a proxy that hides the client's
    # address, successes would otherwise make every merchant share one allowance.
    count, oldest = session.execute(
        select(func.count(), func.min(PortalSignIn.created_at))
        .where(PortalSignIn.remote_addr == remote_addr, PortalSignIn.succeeded.is_(False),
               PortalSignIn.created_at > now - RATE_WINDOW)).one()
    enforce_rate(count, oldest, settings.portal_sign_ins_per_minute, now)
    attempt = PortalSignIn(remote_addr=remote_addr, created_at=now, succeeded=False)
    session.add(attempt)
    session.flush()
    return attempt.id


def exchange(session: Session, token: str, attempt_id: int,
             now: datetime | None = None) -> tuple[str, PortalSession]:
    """Spend the link's token, for the attempt ``admit`` made: (the new session's cookie
    value, its row). Raises LinkRefused for a token that cannot be used."""
    now = now or utcnow()
    row = session.scalar(select(PortalSession).where(
        PortalSession.token_hash == _hash(token or "")))
    if (row is None or row.exchanged_at is not None or row.revoked_at is not None
            or row.token_expires_at <= now or row.expires_at <= now):
        raise LinkRefused()
    raw = secrets.token_urlsafe(32)
    # Conditional: of two requests opening the same link at once, one wins.
    spent = session.execute(
        update(PortalSession)
        .where(PortalSession.id == row.id, PortalSession.exchanged_at.is_(None))
        .values(exchanged_at=now, session_hash=_hash(raw))
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if spent != 1:
        raise LinkRefused()
    session.execute(update(PortalSignIn).where(PortalSignIn.id == attempt_id)
                    .values(succeeded=True))
    session.refresh(row)
    return raw, row


def authenticate(session: Session, raw: str | None,
                 now: datetime | None = None) -> PortalSession | None:
    """The live session the cookie value names, or None (unknown, signed out, expired,
    its partner no longer sent webhooks, or the API key that asked for it revoked)."""
    if not raw:
        return None
    now = now or utcnow()
    row = session.execute(
        select(PortalSession, Partner.active, Partner.flow, ApiKey.revoked_at)
        .join(Partner, Partner.id == PortalSession.partner_id)
        .outerjoin(ApiKey, ApiKey.id == PortalSession.api_key_id)
        .where(PortalSession.session_hash == _hash(raw))).one_or_none()
    if row is None:
        return None
    portal_session, active, flow, key_revoked_at = row
    if (portal_session.revoked_at is not None or portal_session.expires_at <= now
            or not_receiving_webhooks(active, flow) is not None
            # Links the merchant's backend asked for end with the key that asked.
            or key_revoked_at is not None):
        return None
    return portal_session


def principal(portal_session: PortalSession) -> Principal:
    """Who the audit trail says acted: the merchant itself, from the portal."""
    return Principal(portal_session.partner_id, None, source=SOURCE)


def csrf_token(raw: str) -> str:
    """The forms' token of the session the cookie value ``raw`` names: derived from it,
    so it needs no storage, and nobody without the cookie can compute it."""
    return hmac.new(raw.encode(), b"deliverer portal csrf v1", hashlib.sha256).hexdigest()


def sign_out(session: Session, portal_session: PortalSession,
             now: datetime | None = None) -> None:
    portal_session.revoked_at = now or utcnow()


def sign_out_all(session: Session, partner_id: str, now: datetime | None = None) -> int:
    """End every session of the partner, and spoil its unused links; how many."""
    if session.get(Partner, partner_id) is None:
        raise PartnerNotFound()
    return int(session.execute(
        update(PortalSession)
        .where(PortalSession.partner_id == partner_id, PortalSession.revoked_at.is_(None),
               PortalSession.expires_at > (now or utcnow()))
        .values(revoked_at=now or utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount)  # type: ignore[attr-defined]


def push_flash(portal_session: PortalSession, category: str, message: str) -> None:
    """A message for the next page the session loads (after a form's redirect)."""
    portal_session.flash = [*(portal_session.flash or []), [category, message]][-5:]


def pop_flash(portal_session: PortalSession) -> list[tuple[str, str]]:
    messages = [(str(c), str(m)) for c, m in (portal_session.flash or [])]
    if messages:
        portal_session.flash = None
    return messages


def clear_flash(session: Session, portal_session_id: int) -> None:
    """The flash shown, gone: ``pop_flash`` by id, for a transaction begun after it."""
    session.execute(update(PortalSession).where(PortalSession.id == portal_session_id)
                    .values(flash=None).execution_options(synchronize_session=False))
