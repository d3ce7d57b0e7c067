"""SSRF guard: which addresses and URLs a webhook may target."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from deliverer.delivery.sending import netguard
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


METADATA = ["169.254.169.254", "169.254.0.1", "fe80::1", "fe80::1%eth0",
            "::ffff:169.254.169.254", "fd00:ec2::254", "64:ff9b::a9fe:a9fe",
            "100.100.100.200"]


@pytest.mark.parametrize("address", METADATA)
def test_link_local_is_refused_even_where_private_addresses_are_allowed(address):
    """Where clouds serve instance metadata and credentials: the embedded default's
    scripts/start allows private URLs, and a black-box try had its POSTs reach
    169.254.169.254 through it."""
    with pytest.raises(UnsafeUrl):
        netguard.check_address(address, allow_private=True)
    host = address.split("%")[0]
    url = f"http://{host if '.' in host else f'[{host}]'}/latest/meta-data/"
    with pytest.raises(UnsafeUrl):
        netguard.validate_url(url, allow_private=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "192.168.1.1", "fd12::1", "::1"])
def test_private_addresses_pass_where_allowed(address):
    netguard.check_address(address, allow_private=True)


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/hook", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("http://user:pw@example.com/", "credentials"),
    ("http:///nohost", "no host"),
    ("http://example.com:99999/", "not a valid URL"),
    ("https://example.com:0/", "not a valid URL"),
    ("http://example.com/" + "a" * 2100, "too long"),
    # What urllib3 would refuse at every send (a black-box try saved them).
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:5188/a",
     "not a valid domain name"),
    ("http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/a",
     "not a valid domain name"),
])
def test_invalid_urls(url, reason):
    with pytest.raises(UnsafeUrl, match=reason):
        netguard.validate_url(url, allow_private=True)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook",
    "http://[::1]/hook",
    "http://localhost/hook",  # resolves from /etc/hosts, no DNS query
    "http://localhost.:8080/hook",  # the same name, fully qualified
    "http://API.Localhost./hook",
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


def test_an_internationalised_name_is_accepted():
    assert netguard.validate_url("https://bücher.example/hook", allow_private=False)
    # Only its non-ASCII labels are encoded, as urllib3 does: an underscore elsewhere passes.
    assert netguard.validate_url("https://my_host.bücher.example/", allow_private=False)


def test_public_literal_address_is_accepted():
    assert netguard.validate_url("https://8.8.8.8/hook", allow_private=False)


def test_a_names_forbidden_answer_is_not_named_but_a_typed_address_is():
    """Merchants read the message (an attempt's error): with split-horizon DNS, a name
    resolving only inside would otherwise tell them an internal address."""
    with pytest.raises(UnsafeUrl, match="forbidden address") as refused:
        netguard.vetted_addresses("localhost", 80)
    assert "127.0.0.1" not in str(refused.value) and "::1" not in str(refused.value)
    with pytest.raises(UnsafeUrl, match=r"forbidden address \(127\.0\.0\.1\)"):
        netguard.vetted_addresses("127.0.0.1", 80)
    with pytest.raises(UnsafeUrl, match=r"forbidden address \(::1\)"):
        netguard.vetted_addresses("::1", 80)
