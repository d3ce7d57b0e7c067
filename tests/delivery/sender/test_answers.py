"""What the sender keeps of an answer: its body capped (a redirect's too), a Retry-After
read as seconds or an HTTP date and bounded, ignored on other statuses; and nothing stale
carried from one send to the next."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from deliverer.delivery.sending import sender
from deliverer.delivery.sending.sender import parse_retry_after, send
from tests.delivery.sender.helpers import BODY, CONFIG, assert_payload
from tests.support import receiver as rx

# The sender alone, against loopback servers: no database or broker, nothing that differs
# between backends.
pytestmark = pytest.mark.unit


@pytest.mark.parametrize("code", [200, 500])
def test_huge_response_body_is_capped(receiver, code):
    url = receiver.always("/huge", rx.huge(5 * 1024 * 1024, code))
    start = time.monotonic()
    result = send(url, BODY, {}, CONFIG)
    assert time.monotonic() - start < CONFIG.total_timeout
    assert result.success is (code == 200)
    assert result.status_code == code
    assert result.body is not None
    assert len(result.body) == CONFIG.max_response_bytes


def test_huge_redirect_body_is_capped(receiver):
    # requests' own redirect handling would read a 3xx body in full, uncapped.
    url = receiver.always("/huge-redirect",
                          rx.huge(20 * 1024 * 1024, 302, {"Location": "/elsewhere"}))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "redirect", 302)
    assert result.body is not None
    assert len(result.body) == CONFIG.max_response_bytes
    assert [r.path for r in receiver.requests()] == ["/huge-redirect"]


def test_retry_after_seconds(receiver):
    url = receiver.always("/busy", rx.retry_after("120", 429))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "http_status", 429)
    assert result.retry_after == 120.0


def test_retry_after_http_date(receiver):
    when = datetime.now(UTC) + timedelta(seconds=90)
    value = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    url = receiver.always("/down", rx.retry_after(value, 503))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "http_status", 503)
    assert result.retry_after is not None
    assert 85 <= result.retry_after <= 91


def test_retry_after_ignored_on_other_statuses(receiver):
    url = receiver.always("/err", rx.retry_after("120", 500))
    assert send(url, BODY, {}, CONFIG).retry_after is None


def test_sequential_sends_reuse_nothing_stale(receiver):
    """Many sends in a row on one thread's pooled session all go through."""
    url = receiver.always("/many", rx.ok())
    results = [send(url, BODY, {"webhook-id": f"m{i}"}, CONFIG) for i in range(20)]
    assert all(r.success for r in results)
    assert [r.headers["webhook-id"] for r in receiver.requests("/many")] == [
        f"m{i}" for i in range(20)]


def test_parse_retry_after():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:00 GMT", now) == 60.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # past: no wait
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("\u00b2", now) is None  # a digit to str.isdigit, not a number
    assert parse_retry_after("9" * 40, now) is None


def test_parse_retry_after_is_bounded():
    """However long a receiver asks for, the wait stays within datetime arithmetic."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("999999999999", now) == sender.MAX_RETRY_AFTER
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) == sender.MAX_RETRY_AFTER
    assert now + timedelta(seconds=sender.MAX_RETRY_AFTER) > now
