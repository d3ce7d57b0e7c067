"""The sender against a real HTTP receiver on loopback: every outcome classified."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from deliverer.delivery import sender
from deliverer.delivery.sender import SenderConfig, parse_retry_after, send
from deliverer.delivery.troubleshooting import hint_for
from tests.support import receiver as rx

BODY = b'{"id":"evt_1","type":"transaction.updated"}'
CONFIG = SenderConfig(connect_timeout=1.0, total_timeout=0.5, max_response_bytes=20 * 1024,
                      allow_private_urls=True, user_agent="deliverer-test/1")


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


@pytest.mark.parametrize("code", [200, 201, 202, 204])
def test_2xx_is_success(receiver, code):
    url = receiver.always("/ok", rx.ok(code, b"" if code == 204 else b"thanks"))
    result = send(url, BODY, {"webhook-id": "msg_1"}, CONFIG)
    assert result.success is True
    assert result.status_code == code
    assert result.error is None
    assert result.duration_ms >= 0
    assert result.started_at <= datetime.now(UTC)
    [got] = receiver.requests("/ok")
    assert got.method == "POST"
    assert got.body == BODY
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "deliverer-test/1"
    assert got.headers["webhook-id"] == "msg_1"
    assert "cookie" not in got.headers


@pytest.mark.parametrize("code, message", [
    (500, "HTTP 500 Internal Server Error"),
    (404, "HTTP 404 Not Found"),
    (401, "HTTP 401 Unauthorized"),
    (400, "HTTP 400"),
    (410, "HTTP 410"),
    (418, "HTTP 418"),
    (502, "HTTP 502"),
])
def test_non_2xx_is_http_status_failure(receiver, code, message):
    url = receiver.always("/fail", rx.status(code, b"nope"))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "http_status", code, message)
    assert result.status_code == code
    assert result.body == "nope"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_is_a_failure_and_not_followed(receiver, code):
    target = receiver.url("/elsewhere")
    url = receiver.always("/moved", rx.redirect(target, code))
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "redirect", code, "/elsewhere")
    assert [r.path for r in receiver.requests()] == ["/moved"]


def test_timeout_when_receiver_is_slower_than_total_timeout(receiver):
    url = receiver.always("/slow", rx.sleep(3.0))
    start = time.monotonic()
    result = send(url, BODY, {}, CONFIG)
    elapsed = time.monotonic() - start
    assert_payload(result, "timeout")
    assert elapsed < CONFIG.total_timeout + 0.5
    assert len(receiver.requests("/slow")) == 1


@pytest.mark.parametrize("code, headers", [(200, {}), (302, {"Location": "/x"})])
def test_total_deadline_bounds_a_trickling_body(receiver, code, headers):
    # One byte every 0.1 s stays under any per-read timeout; only a total deadline stops it.
    url = receiver.always("/trickle", rx.trickle(40, 0.1, code, headers))
    start = time.monotonic()
    result = send(url, BODY, {}, CONFIG)
    elapsed = time.monotonic() - start
    assert_payload(result, "timeout", code)
    assert elapsed < CONFIG.total_timeout + 0.5, elapsed


def test_connection_refused():
    url = f"http://127.0.0.1:{rx.closed_port()}/hook"
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "connection_refused")
    assert result.status_code is None


def test_connection_reset(receiver):
    url = receiver.always("/reset", rx.reset())
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "connection_reset")
    assert len(receiver.requests("/reset")) == 1


def test_dns_failure():
    # .invalid never resolves (RFC 6761).
    result = send("http://nonexistent.invalid/hook", BODY, {}, CONFIG)
    assert_payload(result, "dns")


def test_tls_failure_against_plain_http(receiver):
    result = send(receiver.url("/hook", scheme="https"), BODY, {}, CONFIG)
    assert_payload(result, "tls", message="TLS handshake failed")
    assert receiver.requests("/hook") == []


def test_ssrf_guard_blocks_loopback(receiver):
    guarded = SenderConfig(connect_timeout=1.0, total_timeout=0.5, allow_private_urls=False)
    result = send(receiver.url("/hook"), BODY, {}, guarded)
    assert_payload(result, "blocked_address", message="127.0.0.1")
    # The guard checks the address actually dialled and hangs up before sending anything.
    time.sleep(0.1)
    assert receiver.requests() == []


def test_ssrf_guard_blocks_a_name_resolving_to_loopback(receiver):
    guarded = SenderConfig(connect_timeout=1.0, total_timeout=0.5, allow_private_urls=False)
    result = send(f"http://localhost:{receiver.port}/hook", BODY, {}, guarded)
    assert_payload(result, "blocked_address")
    time.sleep(0.1)
    assert receiver.requests() == []


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///nohost", "not a url"])
def test_invalid_url(url):
    result = send(url, BODY, {}, CONFIG)
    assert_payload(result, "invalid_url")


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


@pytest.mark.unit
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


@pytest.mark.unit
def test_parse_retry_after_is_bounded():
    """However long a receiver asks for, the wait stays within datetime arithmetic."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("999999999999", now) == sender.MAX_RETRY_AFTER
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) == sender.MAX_RETRY_AFTER
    assert now + timedelta(seconds=sender.MAX_RETRY_AFTER) > now
