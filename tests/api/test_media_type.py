"""A body that is not JSON is refused (415), never read as "no fields" and answered 200."""

from __future__ import annotations

from tests.api.helpers import assert_error


def test_form_body_to_settings_is_415_and_changes_nothing(make_partner):
    partner = make_partner("http://127.0.0.1:9/hook")
    before = partner.api.get("/api/partner/v2/webhook-settings").json()
    response = partner.api.put("/api/partner/v2/webhook-settings",
                                  data="url=http://example.com/x",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE",
                 "Request bodies must be JSON (Content-Type: application/json)")
    assert partner.api.get("/api/partner/v2/webhook-settings").json() == before
