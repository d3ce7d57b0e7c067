"""A manual retry and its endpoint: it sends to the URL the merchant fixed since (the old
queue handed on), is refused without spending anything while the endpoint is disabled
or webhooks are off, and a merchant's patch or registration enables the endpoint that
decides it."""

from __future__ import annotations

from sqlalchemy import update

from deliverer.config import Settings
from deliverer.db import session_scope
from deliverer.errors import Conflict
from deliverer.models import Endpoint, Lane, NotificationStatus, WebhookSettings, utcnow
from deliverer.models.endpoint import DISABLED_BY_MERCHANT
from deliverer.notifications.cycle import ENDPOINT_DISABLED, WEBHOOKS_OFF
from deliverer.notifications.manual_retry import RetryRequest
from deliverer.partners import registered, webhook_settings
from tests.notifications.manual_retry.helpers import URL, decide
from tests.support import helpers as h
from tests.support.rows import failed, head_and_held, partner_requests, set_webhook_url


def test_a_retry_sends_to_the_url_the_merchant_fixed_since(settings):
    shop = h.new_partner(settings, URL)
    nid = failed(shop.partner_id, URL)
    before = h.notification(nid)
    fixed = "http://127.0.0.1:9/fixed"
    with session_scope() as session:
        session.execute(update(WebhookSettings)
                        .where(WebhookSettings.partner_id == shop.partner_id)
                        .values(url=fixed))
    [outcome] = decide(settings, [RetryRequest(h.principal(shop), nid)])
    assert isinstance(outcome, dict) and outcome["url"] == fixed
    after = h.notification(nid)
    assert after.url == fixed and after.endpoint_id != before.endpoint_id
    assert after.sequence is not None


def test_a_head_moved_to_the_fixed_url_hands_the_old_queue_to_the_next(settings):
    """The head of a failing endpoint's queue is retried to the merchant's new URL: the
    notification held behind it on the old endpoint climbs the ladder in its place (it
    was left held, with no next attempt, for good)."""
    shop = h.new_partner(settings, URL)
    head, behind = head_and_held(shop.partner_id, URL)
    set_webhook_url(shop.partner_id, "http://127.0.0.1:9/fixed")
    before = utcnow()
    [outcome] = decide(settings, [RetryRequest(h.principal(shop), head)])
    assert isinstance(outcome, dict) and outcome["url"] == "http://127.0.0.1:9/fixed"
    promoted = h.notification(behind)
    assert not promoted.held and promoted.status == NotificationStatus.FAILED
    assert promoted.next_attempt_at is not None and promoted.next_attempt_at >= before
    assert promoted.url == URL  # still the old endpoint's: only a retry repoints


def _disable(partner_id: str, url: str, reason: str) -> str:
    """The endpoint at ``url`` disabled (as a 410, the merchant or auto-disable leave
    it); returns its public id."""
    with session_scope() as session:
        return session.execute(
            update(Endpoint).where(Endpoint.partner_id == partner_id, Endpoint.url == url)
            .values(disabled_at=utcnow(), disabled_reason=reason)
            .returning(Endpoint.public_id)).scalar_one()


def _refused_as_it_was(settings: Settings, shop, nid: str, message: str) -> None:
    """Refused with ``message``, the notification untouched, the refusal on record, and
    none of the notification's retries or the partner's minute spent."""
    before = h.notification(nid)
    [outcome] = decide(settings, [RetryRequest(h.principal(shop), nid)])
    assert isinstance(outcome, Conflict) and outcome.message == message
    after = h.notification(nid)
    assert (after.status, after.manual_retry_count, after.url, after.endpoint_id,
            after.updated_at) == (before.status, before.manual_retry_count, before.url,
                                  before.endpoint_id, before.updated_at)
    assert [r.outcome for r in partner_requests(shop.partner_id)][-1] == "CONFLICT"
    assert "ACCEPTED" not in [r.outcome for r in partner_requests(shop.partner_id)]


def test_a_retry_to_a_disabled_endpoint_is_refused_and_spends_nothing(settings, enqueued):
    shop = h.new_partner(settings, URL)
    nid = failed(shop.partner_id, URL, held=True)
    public_id = _disable(shop.partner_id, URL, "The receiver answered 410 Gone")
    for _ in range(settings.max_manual_retries + 1):
        _refused_as_it_was(settings, shop, nid, ENDPOINT_DISABLED.format(
            id=public_id, reason="The receiver answered 410 Gone",
            how="save your webhook settings"))
    assert enqueued == []
    # A refused request beside another partner's in a batch does not hold it back.
    neighbour = h.new_partner(settings, "http://127.0.0.1:9/other", name="Neighbour")
    other = failed(neighbour.partner_id, "http://127.0.0.1:9/other")
    outcomes = decide(settings, [RetryRequest(h.principal(shop), nid),
                                 RetryRequest(h.principal(neighbour), other)])
    assert isinstance(outcomes[0], Conflict) and isinstance(outcomes[1], dict)
    assert enqueued == [([other], Lane.MANUAL)]


def test_a_registered_endpoint_the_merchant_disabled_is_enabled_by_its_patch(settings):
    shop = h.new_partner(settings, URL)
    second = "http://127.0.0.1:9/second"
    with session_scope() as session:
        public_id = registered.create(session, settings, shop.partner_id, url=second,
                                      enabled=False).public_id
    nid = failed(shop.partner_id, second)
    _refused_as_it_was(settings, shop, nid, ENDPOINT_DISABLED.format(
        id=public_id, reason=DISABLED_BY_MERCHANT,
        how=f"PATCH /api/partner/v2/endpoints/{public_id} with enabled: true"))


def test_a_retry_while_webhooks_are_off_is_refused(settings):
    shop = h.new_partner(settings, URL)
    nid = failed(shop.partner_id, URL)
    with session_scope() as session:
        session.execute(update(WebhookSettings)
                        .where(WebhookSettings.partner_id == shop.partner_id)
                        .values(enabled=False))
    _refused_as_it_was(settings, shop, nid, WEBHOOKS_OFF)


def test_the_endpoint_deciding_is_the_one_the_retry_sends_to(settings):
    """The URL the merchant fixed in the settings decides, not the disabled old one: a
    retry moving there is accepted; one moving to a disabled endpoint is refused."""
    shop = h.new_partner(settings, URL)
    moving = failed(shop.partner_id, URL)
    _disable(shop.partner_id, URL, "Failed continuously for 5 days")
    fixed = "http://127.0.0.1:9/fixed"
    with session_scope() as session:  # as PUT /webhook-settings does
        webhook_settings.update_settings(session, settings, shop.partner_id, url=fixed)
    [outcome] = decide(settings, [RetryRequest(h.principal(shop), moving)])
    assert isinstance(outcome, dict) and outcome["url"] == fixed

    staying = failed(shop.partner_id, "http://127.0.0.1:9/old")
    public_id = _disable(shop.partner_id, fixed, "The receiver answered 410 Gone")
    before = h.notification(staying)
    [outcome] = decide(settings, [RetryRequest(h.principal(shop), staying)])
    assert isinstance(outcome, Conflict) and outcome.message == ENDPOINT_DISABLED.format(
        id=public_id, reason="The receiver answered 410 Gone",
        how="save your webhook settings")
    after = h.notification(staying)
    assert (after.url, after.endpoint_id, after.manual_retry_count) == (
        before.url, before.endpoint_id, 0)


def test_a_disabled_callback_urls_endpoint_is_enabled_by_registering_it(settings):
    """An event's own callback URL keeps its notification on a retry; disabled (a 410),
    saving the settings would not enable it: registering its URL does."""
    shop = h.new_partner(settings, URL)
    callback = "http://127.0.0.1:9/callback"
    nid = h.insert_notification(shop.partner_id, callback, status=NotificationStatus.FAILED,
                                callback_url=callback)
    public_id = _disable(shop.partner_id, callback, "The receiver answered 410 Gone")
    _refused_as_it_was(settings, shop, nid, ENDPOINT_DISABLED.format(
        id=public_id, reason="The receiver answered 410 Gone",
        how="register its URL with POST /api/partner/v2/endpoints"))
    with session_scope() as session:
        registered.create(session, settings, shop.partner_id, url=callback)
    [outcome] = decide(settings, [RetryRequest(h.principal(shop), nid)])
    assert isinstance(outcome, dict) and outcome["url"] == callback
