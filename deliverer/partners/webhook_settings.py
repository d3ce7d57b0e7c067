"""A partner's webhook settings: URL, enabled flag, alert e-mail, signing secret."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery import netguard, signing
from deliverer.errors import ValidationFailed
from deliverer.models import Endpoint, WebhookSettings, utcnow

_UNSET = object()
MAX_OVERLAP = timedelta(days=7)


def get_settings_row(session: Session, partner_id: str, *, for_update: bool = False
                     ) -> WebhookSettings:
    row = session.get(WebhookSettings, partner_id, with_for_update=for_update)
    if row is None:
        row = WebhookSettings(partner_id=partner_id, url=None, enabled=True,
                              signing_secret=signing.generate_secret(), updated_at=utcnow())
        session.add(row)
        session.flush()
    return row


def update_settings(session: Session, settings: Settings, partner_id: str, *,
                    url: object = _UNSET, enabled: object = _UNSET,
                    alert_email: object = _UNSET) -> WebhookSettings:
    row = get_settings_row(session, partner_id, for_update=True)
    if url is not _UNSET:
        if url is not None:
            assert isinstance(url, str)
            netguard.validate_url(url, allow_private=settings.allow_private_urls)
        row.url = url
        if url is not None:
            _enable_endpoint(session, partner_id, url)
    if enabled is not _UNSET:
        row.enabled = bool(enabled)
    if alert_email is not _UNSET:
        row.alert_email = alert_email  # type: ignore[assignment]
    row.updated_at = utcnow()
    return row


def _enable_endpoint(session: Session, partner_id: str, url: str) -> None:
    """Saving the settings is how a merchant says an endpoint disabled by 410 is back."""
    session.execute(
        update(Endpoint)
        .where(Endpoint.partner_id == partner_id, Endpoint.url == url,
               Endpoint.disabled_at.is_not(None))
        .values(disabled_at=None, disabled_reason=None, draining=True, failing_since=None)
    )


def rotate_secret(session: Session, partner_id: str, overlap: timedelta,
                  now: datetime | None = None) -> WebhookSettings:
    """New secret now; the old one keeps signing alongside it until the overlap ends."""
    now = now or utcnow()
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise ValidationFailed("overlapSeconds must be between 0 and 604800")
    row = get_settings_row(session, partner_id, for_update=True)
    row.previous_secret = row.signing_secret if overlap > timedelta(0) else None
    row.previous_secret_expires_at = now + overlap if overlap > timedelta(0) else None
    row.signing_secret = signing.generate_secret()
    row.updated_at = now
    return row
