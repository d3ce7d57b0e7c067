"""Secrets and API keys never reach the logs, at any level, on any path."""

from __future__ import annotations

import logging

from deliverer.models import NotificationStatus
from tests.api.conftest import ADMIN_TOKEN
from tests.support import receiver as rx
from tests.support.helpers import sent, wait_until


# slow_ladder: the failed notification waits for its manual retry; on the time-scaled
# ladder its next automatic attempt (120 ms later) could deliver it first, and every
# retry after that is a 409.
def test_keys_and_secrets_are_never_logged(worker, receiver, caplog, admin, slow_ladder):
    caplog.set_level(logging.DEBUG)
    url = receiver.always("/hook", rx.status(500))
    created = admin.post("/internal/v1/partners", json={"name": "Quiet", "webhookUrl": url})
    assert created.status_code == 201, created.text
    body = created.json()
    key, secret = body["apiKey"], body["signingSecret"]
    published = admin.post("/internal/v1/events", json={
        "partnerId": body["id"], "type": "transaction.paid", "reference": "TXN-LOG",
        "payload": {"amount": 1}})
    nid = published.json()["notificationId"]
    wait_until(lambda: len(receiver.requests("/hook")) >= 1, message="a failed attempt")
    merchant = admin.as_key(key, auth="x-api-key")
    assert merchant.get(f"/api/partner/v2/webhook-notifications/{nid}").status_code == 200
    wrong_key = key[:-1] + ("1" if key.endswith("0") else "0")  # well-formed, not ours
    wrong = admin.as_key(wrong_key, auth="x-api-key")
    assert wrong.post(f"/api/partner/v2/webhook-notifications/{nid}/retry").status_code == 401
    receiver.always("/hook", rx.ok())
    wait_until(lambda: merchant.post(
        f"/api/partner/v2/webhook-notifications/{nid}/retry").status_code == 200,
        message="the manual retry accepted")
    wait_until(lambda: sent(nid), message="delivery after the retry")
    assert sent(nid).status == NotificationStatus.SENT
    logged = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in caplog.records)
    assert caplog.records, "expected some log lines to inspect"
    secret_body = secret.removeprefix("whsec_")
    for value in (key, wrong_key, secret, secret_body, ADMIN_TOKEN):
        assert value not in logged
