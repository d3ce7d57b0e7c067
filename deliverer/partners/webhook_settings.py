"""A partner's webhook settings: URL, enabled flag, alert e-mail, signing secret."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery import endpoint_queue
from deliverer.delivery.sending import netguard, signing
from deliverer.models import Endpoint, Notification, WebhookSettings, utcnow
from deliverer.models.endpoint import disabled_on_purpose_sql
from deliverer.partners import default_endpoint, rotation

_UNSET = object()


def get_settings_row(session: Session, partner_id: str, *, for_update: bool = False
                     ) -> WebhookSettings:
    row = session.get(WebhookSettings, partner_id, with_for_update=for_update)
    if row is None:
        row = WebhookSettings(partner_id=partner_id, url=None, enabled=True,
                              signing_secret=signing.generate_secret(), updated_at=utcnow())
        session.add(row)
        session.flush()
    return row


def turned_off(session: Session, partner_id: str) -> bool:
    """Whether the merchant turned webhooks off in its settings: nothing is sent to any
    endpoint then (each event's notification is NOT_SENT, what was queued is held)."""
    return session.scalar(select(WebhookSettings.enabled)
                          .where(WebhookSettings.partner_id == partner_id)) is False


def update_settings(session: Session, settings: Settings, partner_id: str, *,
                    url: object = _UNSET, enabled: object = _UNSET,
                    alert_email: object = _UNSET) -> WebhookSettings:
    row = get_settings_row(session, partner_id, for_update=True)
    if url is not _UNSET:
        if url is not None:
            assert isinstance(url, str)
            # One saved before (settings saved back whole) stays as it was spelt.
            check = netguard.validate_url if url == row.url else netguard.validate_saved_url
            check(url, allow_private=settings.allow_private_urls)
        row.url = url
        default_endpoint.make_default(session, partner_id, url,
                                      limit=settings.max_endpoints_per_partner)
    if enabled is not _UNSET:
        row.enabled = bool(enabled)
    if alert_email is not _UNSET:
        row.alert_email = alert_email  # type: ignore[assignment]
    row.updated_at = utcnow()
    if row.enabled:
        resume_deliveries(session, partner_id, row.url, row.updated_at)
    return row


def resume_deliveries(session: Session, partner_id: str, url: str | None,
                      now: datetime) -> None:
    """Saving settings that leave webhooks on is how a merchant says deliveries may go:
    the endpoint a 410 disabled is enabled again if it is the configured URL, and what was
    held while it was disabled or webhooks were off is released, as
    ``endpoint_queue.repair`` releases any queue that nothing else would: healthy
    endpoints drain their held notifications at the drain rate (the beat sweep); a failing
    one keeps probing with one notification at a time, so if the one held was its head,
    the next takes its place.
    """
    if url is not None:
        session.execute(
            update(Endpoint)
            .where(Endpoint.partner_id == partner_id, Endpoint.url == url,
                   Endpoint.disabled_at.is_not(None),
                   # The merchant's own "enabled: false", or an operator's disable,
                   # stands until the merchant says otherwise.
                   ~disabled_on_purpose_sql())
            .values(disabled_at=None, disabled_reason=None, failing_since=None)
        )
    # An endpoint a 410 disabled that is no longer the configured URL will not be enabled
    # again: what it holds stops there, exhausted, as before the 410 holds (a merchant's
    # retry sends it to the URL now configured).
    session.execute(
        update(Notification)
        .where(Notification.held.is_(True),
               Notification.endpoint_id.in_(
                   select(Endpoint.id).where(Endpoint.partner_id == partner_id,
                                             # A registered one the merchant disabled
                                             # keeps what it holds until enabled again.
                                             Endpoint.registered.is_(False),
                                             Endpoint.disabled_at.is_not(None))))
        .values(held=False, next_attempt_at=None, scheduled_for=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()  # the settings row: repair reads whether webhooks are on
    endpoint_queue.repair(session, now, partner_id=partner_id)


def rotate_secret(session: Session, partner_id: str, overlap: timedelta,
                  now: datetime | None = None) -> WebhookSettings:
    """New secret now; the old one keeps signing alongside it until the overlap ends."""
    now = now or utcnow()
    row = get_settings_row(session, partner_id, for_update=True)
    rotation.rotate(row, overlap, now)
    row.updated_at = now
    return row
