"""Standard Webhooks signatures, checked against the reference implementation."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from deliverer.delivery.sending import signing

pytestmark = pytest.mark.unit

BODY = json.dumps({"id": "evt_1", "type": "transaction.updated", "data": {"amount": 1}},
                  separators=(",", ":")).encode()


def test_generated_secret_format():
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    raw = base64.b64decode(secret[len("whsec_"):])
    assert 24 <= len(raw) <= 64
    assert signing.generate_secret() != secret


def test_headers_verify_with_standardwebhooks():
    secret = signing.generate_secret()
    ts = int(time.time())
    headers = signing.signature_headers([secret], "msg_123", ts, BODY)
    assert headers["webhook-id"] == "msg_123"
    assert headers["webhook-timestamp"] == str(ts)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_our_signature_equals_reference_signature():
    from datetime import UTC, datetime

    secret = signing.generate_secret()
    ts = 1_700_000_000
    ours = signing.sign(secret, "msg_1", ts, BODY)
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(ts, UTC), BODY.decode())
    assert ours == theirs


def test_rotation_sends_one_signature_per_secret_and_both_verify():
    new, old = signing.generate_secret(), signing.generate_secret()
    headers = signing.signature_headers([new, old], "msg_rot", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(BODY, headers)


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp"])
def test_tampering_is_detected(tamper):
    secret = signing.generate_secret()
    ts = int(time.time())
    headers = signing.signature_headers([secret], "msg_t", ts, BODY)
    body = BODY
    if tamper == "body":
        body = BODY.replace(b'"amount":1', b'"amount":2')
    elif tamper == "id":
        headers["webhook-id"] = "msg_other"
    else:
        headers["webhook-timestamp"] = str(ts + 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_secret_without_prefix_is_accepted():
    secret = signing.generate_secret()
    bare = secret[len("whsec_"):]
    assert signing.sign(bare, "m", 1, BODY) == signing.sign(secret, "m", 1, BODY)
