"""The portal says the services' API-worded messages in its own pages' terms."""

from __future__ import annotations

import re

import pytest

from api.views.portal import outcome, wording
from deliverer.config import Settings
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.errors import ValidationFailed
from deliverer.models.endpoint import DISABLED_BY_MERCHANT, how_to_enable
from deliverer.notifications.recover import ENDPOINT_DISABLED
from deliverer.partners import catalog, registered, rotation

pytestmark = pytest.mark.unit

API_TERMS = re.compile(r"/api/|\bPATCH\b|\bPUT\b|\bGET /|\bPOST /|overlapSeconds|rateLimit"
                       r"|eventTypes|\[\"\*\"\]")


def _refusal(call) -> str:
    with pytest.raises(ValidationFailed) as raised:
        call()
    return raised.value.message


@pytest.mark.parametrize("message", [
    *(how_to_enable(public_id="ep_0123", is_default=is_default, registered=is_registered,
                    disabled_reason=reason)
      for is_default in (True, False) for is_registered in (True, False)
      for reason in (None, DISABLED_BY_MERCHANT)),
    f"Webhook endpoint disabled. Enable it again once it is back: "
    f"{how_to_enable(public_id='ep_1', is_default=False, registered=True, disabled_reason=None)}.",
    ENDPOINT_DISABLED,
    registered.ROTATION_IN_PROGRESS,
    rotation.ROTATION_IN_PROGRESS,
    registered.RATE_LIMIT_RANGE,
])
def test_api_phrases_become_the_portals(message):
    said = wording.say(message)
    assert not API_TERMS.search(said), said


def test_refusals_of_the_forms_fields_are_said_in_the_portals_terms(tmp_path):
    settings = Settings.from_env({"DELIVERER_DATA_DIR": str(tmp_path)})
    for message in (_refusal(lambda: catalog.check_subscriptions(settings, [])),
                    _refusal(lambda: registered._check_rate_limit(0.0))):
        assert not API_TERMS.search(wording.say(message)), message


@pytest.mark.parametrize("kind", list(FailureKind))
def test_every_hint_is_worded_for_the_portal(kind):
    said = wording.hint(error_payload(kind, "message", None))
    assert said and not API_TERMS.search(said), said


@pytest.mark.parametrize("kind", list(FailureKind))
def test_a_failed_retry_or_test_event_is_said_in_the_portals_terms(kind):
    """The hint of the attempt that failed, as the page shows it (its filter applied)."""
    payload = error_payload(kind, "Disabled by the merchant", None)  # with its hint
    said = wording.say(outcome.failed("Test event", "NOT_SENT", payload))
    assert said.startswith("Test event failed: Disabled by the merchant.")
    assert not API_TERMS.search(said), said


def test_other_text_is_left_as_it_is():
    assert wording.say("HTTP 503: down for maintenance") == "HTTP 503: down for maintenance"
    assert wording.say(None) == ""
    assert wording.hint(None) == ""


def test_the_limit_and_times_are_said_as_the_pages_say_them():
    """The portal try: the provider's 'partner' in the endpoint limit, and a raw ISO time
    in the rotation refusal where every other time reads '... UTC'."""
    assert wording.say(registered.TOO_MANY.format(limit=20)) == (
        "You may have at most 20 endpoints")
    rotating = registered.ROTATION_IN_PROGRESS.format(until="2026-12-08T07:01:02.123456+00:00")
    assert "until 2026-12-08 07:01:02 UTC." in wording.say(rotating)
    assert wording.say("at 2026-12-08T07:01:02Z") == "at 2026-12-08 07:01:02 UTC"
