"""A partner's registered endpoints (``/api/partner/v2/endpoints``): the URLs its events
fan out to, each subscribed to event types (``models.endpoint``).

The partner's webhook-settings URL is its *default* endpoint (``default_endpoint``).
An endpoint whose URL
changes (PATCH, or a new webhook-settings URL for the default) stays the same endpoint:
its sequence numbers go on and what it still holds goes to the new URL
(``relocation.py``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from deliverer import lease
from deliverer.config import Settings
from deliverer.delivery import endpoint_queue
from deliverer.delivery.sending import netguard, signing
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.delivery.undeliverable import ENDPOINT_DELETED as DELETED
from deliverer.delivery.undeliverable import stop_where
from deliverer.errors import Conflict, NotFound, ValidationFailed
from deliverer.models import (
    Endpoint,
    Notification,
    NotificationStatus,
    WebhookSettings,
    still_to_try,
    utcnow,
)
from deliverer.models.endpoint import DISABLED_BY_MERCHANT
from deliverer.partners import catalog, create_keys, rotation
from deliverer.partners.endpoints import hold_publishes
from deliverer.partners.relocation import URL_TAKEN, forget_health, move, row_for_url

_UNSET: Any = object()
TOO_MANY = "A partner may have at most {limit} endpoints"

URL_CHANGED = ("This endpoint's URL is now {url}: it changed after this page was loaded. "
               "Nothing was changed; check it, then try again.")
SETTINGS_CHANGED = ("This endpoint's settings changed after this page was loaded (in another "
                    "window, or through the API). Nothing was changed; check them, then try "
                    "again.")

# An endpoint's own secret is shown only when created or rotated.
ROTATION_IN_PROGRESS = ("A secret rotation of this endpoint is in progress until {until}. "
                        "Rotate with overlapSeconds 0 to drop every older secret now.")


class EndpointNotFound(NotFound):
    message = "Endpoint not found"


class StalePage(Conflict):
    """A page loaded before a change it would undo (``URL_CHANGED``, ``SETTINGS_CHANGED``)."""


def listed(session: Session, partner_id: str) -> list[Endpoint]:
    return list(session.scalars(
        select(Endpoint)
        .where(Endpoint.partner_id == partner_id, Endpoint.registered.is_(True))
        .order_by(Endpoint.created_at, Endpoint.id)))


def _lock_endpoints_of(session: Session, partner_id: str) -> None:
    """Taken first by every change to a partner's endpoints or webhook URL (here, and
    the webhook settings' save, which locks the same row): the partner's settings row.
    One order for all of them, so two changes wait for each other instead of
    deadlocking (an endpoint's row against the settings row), and a URL's check sees
    what the change before it committed. Then the partner's publishes
    (``endpoints.hold_publishes``), which create rows by URL."""
    session.execute(select(WebhookSettings.partner_id)
                    .where(WebhookSettings.partner_id == partner_id).with_for_update())
    hold_publishes(session, partner_id)


def _locked_again(session: Session, endpoint: Endpoint, expect_url: str | None = None,
                  expect_tag: str | None = None) -> None:
    """The endpoint as the change before this one left it, locked (the views read it
    unlocked: a settings save committed since may have moved the default elsewhere).
    ``expect_url``: the URL a page showed; ``expect_tag``: its settings'
    (``Endpoint.settings_tag``); another now is a Conflict (a stale page would undo it)."""
    _lock_endpoints_of(session, endpoint.partner_id)
    session.refresh(endpoint, with_for_update=True)
    if not endpoint.registered:
        raise EndpointNotFound()
    if expect_url is not None and endpoint.url != expect_url:
        raise StalePage(URL_CHANGED.format(url=endpoint.url))
    if expect_tag is not None and endpoint.settings_tag != expect_tag:
        raise StalePage(SETTINGS_CHANGED)


def get(session: Session, partner_id: str, public_id: str, *,
        for_update: bool = False) -> Endpoint:
    """One registered endpoint of the partner; another partner's id is not found.
    ``for_update``: to be changed, locked after ``_lock_endpoints_of``."""
    query = select(Endpoint).where(Endpoint.public_id == public_id,
                                   Endpoint.partner_id == partner_id,
                                   Endpoint.registered.is_(True))
    if for_update:
        _lock_endpoints_of(session, partner_id)
    endpoint = session.scalar(query.with_for_update() if for_update else query)
    if endpoint is None:
        raise EndpointNotFound()
    return endpoint


# At least one delivery every ~17 minutes: a limit below that spaces a backlog over
# months, and a vanishing one overflows the limiter's date arithmetic.
MIN_RATE_LIMIT = 0.001
# Not beyond what one endpoint could be sent.
MAX_RATE_LIMIT = 10_000.0
RATE_LIMIT_RANGE = (f"rateLimit must be between {MIN_RATE_LIMIT:g} and {MAX_RATE_LIMIT:g} "
                    "deliveries per second")


def _check_rate_limit(rate_limit: float | None) -> None:
    if rate_limit is not None and not MIN_RATE_LIMIT <= rate_limit <= MAX_RATE_LIMIT:
        raise ValidationFailed(RATE_LIMIT_RANGE)


def count_registered(session: Session, partner_id: str) -> int:
    """The partner's endpoints, as the limit counts them (``TOO_MANY``)."""
    return session.scalar(select(func.count()).select_from(Endpoint).where(
        Endpoint.partner_id == partner_id, Endpoint.registered.is_(True))) or 0


def create(session: Session, settings: Settings, partner_id: str, *, url: str,
           description: str | None = None, event_types: list[str] | None = None,
           enabled: bool = True, rate_limit: float | None = None,
           now: datetime | None = None) -> Endpoint:
    """A new registered endpoint with a secret of its own (shown once, in the answer)."""
    return create_keyed(session, settings, partner_id, None, url=url,
                        description=description, event_types=event_types, enabled=enabled,
                        rate_limit=rate_limit, now=now)[0]


def create_keyed(session: Session, settings: Settings, partner_id: str, key: str | None, *,
                 url: str, description: str | None = None,
                 event_types: list[str] | None = None, enabled: bool = True,
                 rate_limit: float | None = None, now: datetime | None = None
                 ) -> tuple[Endpoint, bool]:
    """``create``, under the merchant's Idempotency-Key ``key``: (the endpoint, whether an
    earlier create made it under that key, ``create_keys``).

    The count is checked under a lock on the partner's settings row, so parallel creates
    cannot pass the limit together. A URL that had a row (an old webhook URL, an event's
    callback URL, a deleted endpoint) takes that row over, with its sequence numbers."""
    now = now or utcnow()
    netguard.validate_saved_url(url, allow_private=settings.allow_private_urls)
    subscriptions = catalog.check_subscriptions(settings, event_types or ["*"])
    _check_rate_limit(rate_limit)
    asked = create_keys.Asked(url, description, subscriptions, rate_limit, enabled)
    _lock_endpoints_of(session, partner_id)
    if key is not None:
        # Before the limit: the repeat of the create that made the 20th is not a 21st.
        earlier = create_keys.created_under(session, partner_id, key, asked, now)
        if earlier is not None:
            return earlier, True
    if count_registered(session, partner_id) >= settings.max_endpoints_per_partner:
        raise Conflict(TOO_MANY.format(limit=settings.max_endpoints_per_partner))
    endpoint = row_for_url(session, partner_id, url)
    if endpoint is not None and endpoint.registered:
        raise Conflict(URL_TAKEN.format(id=endpoint.public_id))
    if endpoint is None:
        endpoint = Endpoint(partner_id=partner_id, url=url, last_sequence=0, created_at=now,
                            consecutive_failures=0)
        session.add(endpoint)
    else:
        # A new endpoint at an old URL (a deleted endpoint's, an old webhook URL's):
        # born healthy, or auto-disable counted from the deleted one's failures and
        # disabled it within a minute of its creation (a black-box try).
        endpoint.created_at = now
        forget_health(endpoint)
    endpoint.registered = True
    endpoint.is_default = False
    endpoint.deleted_at = None
    endpoint.description = description
    endpoint.event_types = subscriptions
    endpoint.rate_limit = rate_limit
    endpoint.signing_secret = signing.generate_secret()
    endpoint.previous_secret = None
    endpoint.previous_secret_expires_at = None
    endpoint.disabled_at = None if enabled else now
    endpoint.disabled_reason = None if enabled else DISABLED_BY_MERCHANT
    create_keys.remember(endpoint, key, asked)
    session.flush()
    return endpoint, False


def update_endpoint(session: Session, settings: Settings, endpoint: Endpoint, *,
                    url: Any = _UNSET, description: Any = _UNSET, event_types: Any = _UNSET,
                    enabled: Any = _UNSET, rate_limit: Any = _UNSET,
                    expect_url: str | None = None, expect_tag: str | None = None,
                    now: datetime | None = None) -> Endpoint:
    now = now or utcnow()
    _locked_again(session, endpoint, expect_url, expect_tag)
    if event_types is not _UNSET:
        endpoint.event_types = catalog.check_subscriptions(settings, event_types or ["*"])
    if rate_limit is not _UNSET:
        if rate_limit != endpoint.rate_limit:  # one saved before (forms send it back) stays
            _check_rate_limit(rate_limit)
        endpoint.rate_limit = rate_limit
        endpoint.next_send_at = None
    if description is not _UNSET:
        endpoint.description = description
    if url is not _UNSET and url != endpoint.url:
        move(session, settings, endpoint, url)
    if enabled is not _UNSET:
        if not enabled and endpoint.disabled_at is None:
            endpoint.disabled_at = now
            endpoint.disabled_reason = DISABLED_BY_MERCHANT
        elif enabled and endpoint.disabled_at is not None:
            enable(session, endpoint, now)
    session.flush()
    return endpoint


def enable(session: Session, endpoint: Endpoint, now: datetime) -> None:
    """Enabled again: what it holds is released in sequence order at the drain rate (the
    beat sweep drains it), or, still failing, its queue's next one probes it."""
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    endpoint.failing_since = None
    endpoint.consecutive_failures = 0
    endpoint.alerted_at = None
    session.flush()
    endpoint_queue.repair(session, now, partner_id=endpoint.partner_id)


def delete(session: Session, endpoint: Endpoint, now: datetime | None = None, *,
           expect_url: str | None = None) -> int:
    """Deleted: nothing more fans out to it, and what it still holds becomes NOT_SENT,
    with the reason recorded on each notification. Returns how many."""
    now = now or utcnow()
    _locked_again(session, endpoint, expect_url)
    endpoint.deleted_at = now
    endpoint.registered = False
    forget_health(endpoint)  # nothing more is tried: it is not failing
    if endpoint.is_default:
        endpoint.is_default = False
        session.execute(update(WebhookSettings)
                        .where(WebhookSettings.partner_id == endpoint.partner_id)
                        .values(url=None, updated_at=now))
    stopped = stop_where(
        session, error_payload(FailureKind.ENDPOINT_DISABLED, DELETED),
        Notification.endpoint_id == endpoint.id,
        Notification.status.in_((NotificationStatus.PENDING, NotificationStatus.FAILED)),
        still_to_try(),
        # One in flight is recorded by its worker.
        lease.is_free(Notification.lease_expires_at, now))
    session.flush()
    return stopped


def rotate_secret(session: Session, endpoint: Endpoint, overlap: timedelta,
                  now: datetime | None = None) -> str:
    """The endpoint's new secret. The default endpoint signs with the webhook settings'
    secret, which is rotated then (GET /webhook-settings shows it)."""
    now = now or utcnow()
    if endpoint.signing_secret is None:
        row = session.get(WebhookSettings, endpoint.partner_id, with_for_update=True)
        if row is None:
            raise EndpointNotFound()
        secret = rotation.rotate(row, overlap, now)
        row.updated_at = now
        return secret
    return rotation.rotate(endpoint, overlap, now,  # type: ignore[arg-type]
                           in_progress=ROTATION_IN_PROGRESS)
