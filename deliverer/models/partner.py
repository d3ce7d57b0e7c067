from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from deliverer.models.base import Base, new_id, utcnow


class PartnerFlow(StrEnum):
    # Partners on the WEBHOOK flow get notifications pushed; POLLING partners read them
    # and may not use the webhook endpoints (403 INVALID_PARTNER_FLOW).
    WEBHOOK = "WEBHOOK"
    POLLING = "POLLING"


class Partner(Base):
    __tablename__ = "partners"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    flow: Mapped[str] = mapped_column(String(16), default=PartnerFlow.WEBHOOK)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    settings: Mapped[WebhookSettings | None] = relationship(
        back_populates="partner", uselist=False, lazy="raise"
    )


class ApiKey(Base):
    """An API key, stored as its SHA-256 hash; the clear key is shown once at creation.

    Keys are 192-bit random strings, so a fast hash is as strong as a slow one here and
    lets the API look a key up by an index on the hash.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    # The first characters of the key, kept in clear so people can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class WebhookSettings(Base):
    __tablename__ = "webhook_settings"

    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), primary_key=True)
    url: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(default=True)
    alert_email: Mapped[str | None] = mapped_column(String(320))
    signing_secret: Mapped[str] = mapped_column(String(128))
    # During a rotation deliveries carry signatures from both secrets until this time.
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    partner: Mapped[Partner] = relationship(back_populates="settings", lazy="raise")

    def active_secrets(self, now: datetime) -> list[str]:
        return active_secrets(self.signing_secret, self.previous_secret,
                              self.previous_secret_expires_at, now)


def active_secrets(signing_secret: str | None, previous_secret: str | None,
                   previous_expires_at: datetime | None, now: datetime) -> list[str]:
    """The secrets deliveries are signed with: the current one, and the previous one
    during a rotation's overlap. None for a partner without webhook settings."""
    secrets = [signing_secret] if signing_secret else []
    if previous_secret and (previous_expires_at is None or previous_expires_at > now):
        secrets.append(previous_secret)
    return secrets


def signing_secrets(own: tuple[str | None, str | None, datetime | None],
                    partners: tuple[str | None, str | None, datetime | None],
                    now: datetime) -> list[str]:
    """What a POST to an endpoint is signed with: a registered endpoint's own secret (and
    previous one), else, for the default endpoint and callback URLs, the partner's.
    Each: (secret, previous secret, when the previous one stops signing)."""
    return active_secrets(*own, now) if own[0] else active_secrets(*partners, now)


INACTIVE = "The partner is inactive: no webhook is pushed to it"
POLLING = ("The partner is on the POLLING flow: it reads its notifications, no webhook is "
           "pushed to it")


def not_receiving_webhooks(active: bool, flow: str) -> str | None:
    """Why no webhook is pushed to a partner (inactive, or on the POLLING flow), or None.
    Publishing, claims, operator retries and the partner API all ask this."""
    if not active:
        return INACTIVE
    if flow != PartnerFlow.WEBHOOK:
        return POLLING
    return None
