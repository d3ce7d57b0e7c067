"""What the bad-input tests share: the paths, the body-size limit, and the proof that a
refused request changed nothing."""

from __future__ import annotations

from tests.api import helpers as t

BASE = "/api/partner/v2"
SETTINGS = f"{BASE}/webhook-settings"
ROTATE = f"{BASE}/webhook-settings/rotate-secret"
JSON = {"Content-Type": "application/json"}
BIG = 300 * 1024  # over the 256 KiB request limit


def unchanged(partner, check):
    """Run ``check`` and prove that no table and no setting changed (refusals may be logged)."""
    counts = t.row_counts()
    row = t.settings_row(partner.partner_id)
    check()
    after = t.row_counts()
    assert {k: v for k, v in after.items() if k != "partner_requests"} == {
        k: v for k, v in counts.items() if k != "partner_requests"}
    assert t.accepted(partner.partner_id) == []
    now = t.settings_row(partner.partner_id)
    assert (now.url, now.enabled, now.alert_email, now.signing_secret, now.updated_at) == (
        row.url, row.enabled, row.alert_email, row.signing_secret, row.updated_at)
