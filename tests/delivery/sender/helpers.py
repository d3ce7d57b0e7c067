"""What the sender tests share: the body they send, the sender's settings (loopback
allowed, or guarded), and the check of a failure's error payload."""

from __future__ import annotations

from deliverer.delivery.sending import sender
from deliverer.delivery.sending.sender import SenderConfig
from deliverer.delivery.troubleshooting import hint_for

BODY = b'{"id":"evt_1","type":"transaction.updated"}'
CONFIG = SenderConfig(connect_timeout=1.0, total_timeout=0.5, max_response_bytes=20 * 1024,
                      allow_private_urls=True, user_agent="deliverer-test/1")
GUARDED = SenderConfig(connect_timeout=1.0, total_timeout=0.5, allow_private_urls=False)


def assert_payload(result, kind, status=None, message=None):
    assert result.success is False
    assert result.error is not None
    assert set(result.error) == {"kind", "message", "httpStatus", "hint"}
    assert result.error["kind"] == kind
    assert result.error["httpStatus"] == status
    assert result.error["hint"] == hint_for(sender.FailureKind(kind), status)
    assert result.error["message"]
    if message is not None:
        assert message in result.error["message"]
