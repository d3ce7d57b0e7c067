"""``deliverer endpoint add/list`` and ``deliverer publish``'s deliveries, run as a user
runs them (the real script in a subprocess)."""

from __future__ import annotations

import json

import deliverer
from deliverer.db import session_scope
from deliverer.models import NotificationStatus, RequestKind
from deliverer.notifications.audit import OPERATOR
from deliverer.partners import registered, webhook_settings
from tests.support import helpers as h
from tests.support.cli import run_cli
from tests.support.rows import partner_requests


def test_endpoints_added_from_the_cli_receive_what_they_subscribe_to(settings):
    shop = h.new_partner(settings, "https://shop.example/hooks")
    added = run_cli(settings, "endpoint", "add", shop.partner_id,
                    "https://shop.example/billing", "--event-type", "invoice.*",
                    "--description", "Billing", "--rate-limit", "5")
    billing = json.loads(added.stdout)
    assert billing["id"].startswith("ep_") and billing["signingSecret"].startswith("whsec_")
    assert (billing["eventTypes"], billing["rateLimit"]) == (["invoice.*"], 5.0)
    assert "not shown again" in added.stderr

    listed = json.loads(run_cli(settings, "endpoint", "list", shop.partner_id,
                                "--json").stdout)
    assert [(e["url"], e["eventTypes"], e["isDefault"]) for e in listed] == [
        ("https://shop.example/hooks", ["*"], True),
        ("https://shop.example/billing", ["invoice.*"], False)]
    table = run_cli(settings, "endpoint", "list", shop.partner_id).stdout.splitlines()
    assert table[0].startswith("* ") and billing["id"] in table[1]
    # Which is which, as the API and the portal show it (the operator try).
    assert billing["description"] == "Billing" and table[1].endswith("(Billing)")
    assert [e["description"] for e in listed] == [None, "Billing"]

    out = json.loads(run_cli(settings, "publish", shop.partner_id, "invoice.settled",
                             "INV-1", "--payload", '{"invoice_id": 1}').stdout)
    default_id = listed[0]["id"]
    assert (out["notificationId"], out["sequence"]) == (
        out["deliveries"][0]["notificationId"], 1)
    assert [(d["endpointId"], d["sequence"], d["status"]) for d in out["deliveries"]] == [
        (default_id, 1, "PENDING"), (billing["id"], 1, "PENDING")]
    only_default = json.loads(run_cli(settings, "publish", shop.partner_id,
                                      "transaction.paid", "TXN-1").stdout)
    assert [d["endpointId"] for d in only_default["deliveries"]] == [default_id]


def test_endpoint_commands_say_what_is_wrong(settings):
    shop = h.new_partner(settings, None)
    unknown = run_cli(settings, "endpoint", "add", shop.partner_id, "https://a.example/x",
                      "--event-type", "order.shipped", check=False)
    assert unknown.returncode == 1 and "Unknown event types: order.shipped" in unknown.stderr
    missing = run_cli(settings, "endpoint", "list", "nope", check=False)
    assert missing.returncode == 1 and "Partner not found" in missing.stderr
    slow = run_cli(settings, "endpoint", "add", shop.partner_id, "https://a.example/x",
                   "--rate-limit", "0", check=False)
    assert slow.returncode == 2
    assert json.loads(run_cli(settings, "endpoint", "list", shop.partner_id,
                              "--json").stdout) == []


def test_publish_refuses_an_empty_or_overlong_reference_in_one_line(settings):
    shop = h.new_partner(settings, "https://shop.example/hooks")
    for reference in ("", "r" * 5000):
        refused = run_cli(settings, "publish", shop.partner_id, "transaction.paid", reference,
                          check=False)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.strip() == (
            "Error: reference: must be a string of 1 to 200 characters"), refused.stderr


def test_an_operator_disables_and_enables_an_endpoint(settings, worker, receiver):
    # The console and the CLI had no way to stop an endpoint hammering its merchant's
    # server, nor to enable one again, without the merchant's key (the operator try).
    shop = h.new_partner(settings, receiver.url("/default"))
    added = json.loads(run_cli(settings, "endpoint", "add", shop.partner_id,
                               receiver.url("/orders")).stdout)
    off = run_cli(settings, "endpoint", "disable", added["id"], "--reason", "hammering")
    assert off.stdout.strip() == (
        f"{added['id']} disabled (Disabled by the operator: hammering).")
    published = deliverer.publish_event(shop.partner_id, "transaction.paid", "TXN-OFF", {})
    statuses = {d.endpoint_id: d.status for d in published.deliveries}
    assert statuses[added["id"]] == NotificationStatus.NOT_SENT
    again = run_cli(settings, "endpoint", "disable", added["id"])
    assert again.stdout.strip() == f"{added['id']} is disabled already."
    on = run_cli(settings, "endpoint", "enable", added["id"].upper())  # as pasted
    assert "enabled" in on.stdout
    later = deliverer.publish_event(shop.partner_id, "transaction.paid", "TXN-ON", {})
    [to_orders] = [d for d in later.deliveries if d.endpoint_id == added["id"]]
    h.wait_until(lambda: h.sent(to_orders.notification_id), message="sent once enabled")
    unknown = run_cli(settings, "endpoint", "enable", "ep_000000000000000000000000",
                      check=False)
    assert unknown.returncode == 1 and "Endpoint not found" in unknown.stderr
    # On the audit trail, as the console's retries are (the already-disabled one: no row).
    assert [(r.kind, r.outcome, r.reference, r.api_key_id)
            for r in partner_requests(shop.partner_id)] == [
        (RequestKind.ENDPOINT_DISABLE, OPERATOR, added["id"], None),
        (RequestKind.ENDPOINT_ENABLE, OPERATOR, added["id"], None)]


def test_an_operators_disable_stands_a_settings_save_and_a_merchants_needs_force(settings):
    # The review: any PUT /webhook-settings with webhooks on enabled the default endpoint
    # an operator had stopped; enable overrode a merchant's own disable unasked.
    shop = h.new_partner(settings, "http://127.0.0.1:9/default")
    default_id = json.loads(run_cli(settings, "endpoint", "list", shop.partner_id,
                                    "--json").stdout)[0]["id"]
    run_cli(settings, "endpoint", "disable", default_id)
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, shop.partner_id,
                                         alert_email="ops@shop.test")
    assert _status(settings, shop.partner_id, default_id) == "DISABLED"
    run_cli(settings, "endpoint", "enable", default_id)
    with session_scope() as session:  # the merchant's own enabled: false
        registered.update_endpoint(session, settings, registered.get(
            session, shop.partner_id, default_id, for_update=True), enabled=False)
    refused = run_cli(settings, "endpoint", "enable", default_id, check=False)
    assert refused.returncode == 1 and "Its merchant disabled it" in refused.stderr
    assert _status(settings, shop.partner_id, default_id) == "DISABLED"
    run_cli(settings, "endpoint", "enable", default_id, "--force")
    assert _status(settings, shop.partner_id, default_id) == "ACTIVE"


def _status(settings, partner_id: str, public_id: str) -> str:
    listed = json.loads(run_cli(settings, "endpoint", "list", partner_id,
                                "--json").stdout)
    return next(e["status"] for e in listed if e["id"] == public_id)
