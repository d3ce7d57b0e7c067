from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, false
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, utcnow


class PortalSession(Base):
    """A merchant portal sign-in (``deliverer.portal.sessions``): first a single-use link
    token, then, once the link is opened, the session its cookie names.

    Only SHA-256 hashes of both are stored (256-bit random values: a fast hash is as
    strong as a slow one, and lets a request find its row by an index).
    """

    __tablename__ = "portal_sessions"
    __table_args__ = (Index(None, "partner_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Set when the link is opened (the token is then spent); NULL until then.
    session_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Who asked for the link: "admin" (the internal API) or "api_key" (the merchant's).
    issued_by: Mapped[str] = mapped_column(String(16))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The link must be opened by then; the session ends at expires_at whatever happens.
    token_expires_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    exchanged_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Messages for the next page (after a form's redirect): the portal keeps no state in
    # its cookie but the session's name.
    flash: Mapped[list[Any] | None] = mapped_column(JSON)


class PortalSignIn(Base):
    """One attempt to open a portal link, for the exchange's rate limit per address."""

    __tablename__ = "portal_sign_ins"
    __table_args__ = (Index(None, "remote_addr", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    remote_addr: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded: Mapped[bool]
