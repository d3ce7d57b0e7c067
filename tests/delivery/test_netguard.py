"""SSRF guard: which addresses and URLs a webhook may target."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from deliverer.delivery import netguard
from deliverer.delivery.troubleshooting import FailureKind, error_payload, hint_for
from deliverer.errors import UnsafeUrl

pytestmark = pytest.mark.unit

FORBIDDEN = [
    "127.0.0.1", "127.255.0.1",  # loopback
    "10.0.0.1", "172.16.5.4", "192.168.1.1",  # private
    "169.254.169.254",  # link-local, cloud metadata
    "100.64.0.1", "100.127.255.254",  # CGNAT
    "0.0.0.0", "0.1.2.3",  # this network
    "224.0.0.1", "239.255.255.250",  # multicast
    "240.0.0.1", "255.255.255.255",  # reserved, broadcast
    "192.0.0.8", "192.0.2.10", "198.18.0.1", "198.51.100.7", "203.0.113.9",  # special, docs
    "::1", "::",  # loopback, unspecified
    "fc00::1", "fd12:3456::1",  # ULA
    "fe80::1",  # link-local
    "fec0::1", "feff:ffff::1",  # site-local, deprecated but still routed where configured
    "ff02::1",  # multicast
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2001:db8::1",  # documentation
]

ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
           "2a00:1450:4001:82a::200e", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_addresses(address):
    assert netguard.is_forbidden_address(ipaddress.ip_address(address))
    with pytest.raises(UnsafeUrl):
        netguard.check_address(address, allow_private=False)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses(address):
    assert not netguard.is_forbidden_address(ipaddress.ip_address(address))
    netguard.check_address(address, allow_private=False)


def test_scoped_ipv6_and_allow_private():
    with pytest.raises(UnsafeUrl):
        netguard.check_address("fe80::1%eth0", allow_private=False)
    netguard.check_address("127.0.0.1", allow_private=True)


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/hook", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("http://user:pw@example.com/", "credentials"),
    ("http:///nohost", "no host"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://example.com/" + "a" * 2100, "too long"),
])
def test_invalid_urls(url, reason):
    with pytest.raises(UnsafeUrl, match=reason):
        netguard.validate_url(url, allow_private=True)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook",
    "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://localhost/hook",  # resolves from /etc/hosts, no DNS query
    "http://[::ffff:127.0.0.1]/hook",
])
def test_urls_resolving_to_private_addresses_are_rejected(url):
    with pytest.raises(UnsafeUrl, match="forbidden address"):
        netguard.validate_url(url, allow_private=False)
    # The same URL is fine when private URLs are allowed, and well formed.
    assert netguard.validate_url(url, allow_private=True) == url
    assert netguard.check_url_form(url) == url


def test_a_name_is_saved_without_a_dns_query_and_vetted_when_dialled(monkeypatch):
    """A merchant may save a name whose DNS does not exist yet (README's acme.example);
    the address check happens at each send (vetted_addresses)."""
    real = socket.getaddrinfo

    def numeric_only(host: str, *args: object, flags: int = 0, **kwargs: object) -> object:
        if not flags & socket.AI_NUMERICHOST:
            raise AssertionError("saving a URL must not query DNS")
        return real(host, *args, flags=flags, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    for url in ("https://acme.example/hooks", "https://hooks.example.com:8443/in"):
        assert netguard.validate_url(url, allow_private=False) == url
    with pytest.raises(UnsafeUrl, match="forbidden address"):
        netguard.validate_url("http://api.localhost/hook", allow_private=False)


def test_public_literal_address_is_accepted():
    assert netguard.validate_url("https://8.8.8.8/hook", allow_private=False)


# ------------------------------------------------------------------ error payloads and hints


def test_error_payload_shape():
    payload = error_payload(FailureKind.HTTP_STATUS, "HTTP 500 Internal Server Error", 500)
    assert set(payload) == {"kind", "message", "httpStatus", "hint"}
    assert payload["kind"] == "http_status"
    assert payload["httpStatus"] == 500
    assert payload["hint"].startswith("Internal server error")


@pytest.mark.parametrize("status, start", [
    (400, "Bad request"), (401, "Unauthorized"), (403, "Forbidden"), (404, "Not found"),
    (410, "Gone"), (413, "Payload too large"), (422, "Unprocessable"), (429, "Too many"),
    (500, "Internal server error"), (502, "Bad gateway"), (503, "Service unavailable"),
    (504, "Gateway timeout"),
    (507, "Internal server error"),  # any other 5xx gets the generic server-error hint
])
def test_status_hints(status, start):
    assert hint_for(FailureKind.HTTP_STATUS, status).startswith(start)


def test_unknown_4xx_hint_names_the_status():
    assert "HTTP 418" in hint_for(FailureKind.HTTP_STATUS, 418)


def test_redirect_hint_whatever_the_status():
    for status in (301, 302, 307, 308):
        assert hint_for(FailureKind.REDIRECT, status).startswith("Redirects are not followed")


@pytest.mark.parametrize("kind, start", [
    (FailureKind.TIMEOUT, "Timeout"),
    (FailureKind.CONNECTION_REFUSED, "Connection refused"),
    (FailureKind.CONNECTION_RESET, "Connection reset"),
    (FailureKind.DNS, "DNS error"),
    (FailureKind.TLS, "TLS error"),
    (FailureKind.BLOCKED, "The webhook URL points to a private"),
    (FailureKind.INVALID_URL, "The webhook URL is not a valid"),
    (FailureKind.CONNECTION_ERROR, "Connection error"),
    (FailureKind.NO_URL, "No webhook URL"),
])
def test_kind_hints(kind, start):
    payload = error_payload(kind, "msg")
    assert payload == {"kind": str(kind), "message": "msg", "httpStatus": None,
                       "hint": hint_for(kind)}
    assert payload["hint"].startswith(start)
