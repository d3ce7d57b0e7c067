"""``deliverer portal-url PARTNER_ID``: the README's way into the demo partner's portal."""

from __future__ import annotations

from tests.support import helpers as h
from tests.support.cli import run_cli
from tests.support.page_client import PortalClient


def test_portal_url_prints_a_link_that_signs_in_once(settings, portal_server):
    shop = h.new_partner(settings, None, name="CLI Shop")
    printed = run_cli(settings, "portal-url", shop.partner_id, "--base-url", portal_server.url)
    url = printed.stdout.strip()
    assert url.startswith(f"{portal_server.url}/portal/enter?token=")
    assert "Open it once" in printed.stderr
    browser = PortalClient(portal_server.url)
    assert "Your webhook endpoints" in browser.open_link(url).text
    assert PortalClient(portal_server.url).open_link(url).status_code == 403
    # By name, as the README names the demo's partner (each demo run makes one more: the
    # newest is meant); the port deliverer run listens on.
    newest = h.new_partner(settings, None, name="CLI Shop")
    default = run_cli(settings, "portal-url", "CLI Shop", "--read-only", PORT="5123")
    assert default.stdout.startswith("http://127.0.0.1:5123/portal/enter?token=")
    assert f"2 partners are named 'CLI Shop': this link is for the newest, " \
           f"{newest.partner_id}" in default.stderr


def test_portal_url_of_an_unknown_partner_says_so(settings):
    result = run_cli(settings, "portal-url", "00000000-0000-0000-0000-000000000000",
                     check=False)
    assert result.returncode == 1 and "Partner not found" in result.stderr
