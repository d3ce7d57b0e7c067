"""SSRF protection: webhook URLs must not reach the provider's own network.

Checked when a URL is saved (a literal address, or a localhost name) and, what counts,
when a connection is made: the sender resolves the host once with ``vetted_addresses``
and dials only the addresses checked there, so DNS rebinding between the save and the
send, or between a check and the connect, gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import idna

from deliverer.errors import UnsafeUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

_EXTRA_BLOCKED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "169.254.0.0/16",  # link-local, cloud metadata
        "192.0.0.0/24",
        "192.0.2.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "fc00::/7",  # ULA
        "fe80::/10",
        # Site-local: deprecated (RFC 3879), so Python counts it as global, but still
        # routed inside the networks that configured it.
        "fec0::/10",
        "64:ff9b::/96",  # NAT64 can reach IPv4 private space
        "2001:db8::/32",
    )
]


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), if any: with private
    addresses allowed, NAT64's prefix is, so the address it carries decides."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour


def is_forbidden_address(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # Judged by the IPv4 address it carries (NAT64's prefix is refused whole below).
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_forbidden_address(mapped)
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return True
    return any(address in net for net in _EXTRA_BLOCKED)


# Refused even where private addresses are allowed (DELIVERER_ALLOW_PRIVATE_URLS, the
# embedded default's scripts/start): link-local, where clouds serve instance metadata and
# credentials (169.254.169.254, AWS's fd00:ec2::254). A receiver on a private network
# never needs them; a merchant who names them wants the machine's secrets.
_METADATA = [ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128",  # link-local; AWS's IPv6 one
    "100.100.100.200/32",  # Alibaba Cloud's, in CGNAT space
)]


def _is_metadata(address: IPAddress) -> bool:
    embedded = _embedded_ipv4(address)
    return any(a in net for a in (address, embedded) if a is not None for net in _METADATA)


def check_address(ip: str, *, allow_private: bool, named: bool = False) -> None:
    """Raise UnsafeUrl if ``ip`` may not be dialled. ``named``: the address is a host
    name's DNS answer, which the message does not repeat: merchants read it (the
    attempt's error, the portal), and with split-horizon DNS a name that resolves only
    inside would tell them an internal address. An address they typed is named."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if _is_metadata(address) if allow_private else is_forbidden_address(address):
        raise UnsafeUrl("Webhook URL resolves to a forbidden address"
                        + ("" if named else f" ({address})"))


def is_address(host: str) -> bool:
    """Whether ``host`` is an address written out (the URL's own), not a name."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_url_form(url: str) -> str:
    """Return the URL if it is a well-formed http(s) URL without credentials."""
    if len(url) > 2048:
        raise UnsafeUrl("Webhook URL is too long")
    try:
        parts = urlsplit(url)
        if parts.port == 0:  # raises ValueError on a port out of range
            raise ValueError("port 0")  # nothing listens there: no connection can be made
    except ValueError as exc:
        raise UnsafeUrl("Webhook URL is not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("Webhook URL must use http or https")
    if not parts.hostname:
        raise UnsafeUrl("Webhook URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("Webhook URL must not carry credentials")
    return url


def validate_url(url: str, *, allow_private: bool) -> str:
    """Return the URL if it may be saved as a webhook target, else raise UnsafeUrl.

    A literal address is checked here; a host name is not looked up: it is vetted each
    time it is dialled (``vetted_addresses``), which is the check that counts, since DNS
    can change between a save and a send. So a merchant can save a name whose DNS does
    not exist yet, as Stripe and Svix allow, and saving makes no DNS query.
    """
    check_url_form(url)
    host = urlsplit(url).hostname or ""
    # Label by label, as urllib3 encodes a name when dialling: one it refuses (full-width
    # or circled letters spelling localhost) was saved, then failed every delivery (a try).
    for label in host.split("."):
        if not label.isascii():
            try:
                idna.encode(label.lower(), strict=True, std3_rules=True)
            except (idna.IDNAError, UnicodeError) as exc:
                raise UnsafeUrl(
                    f"Webhook URL host is not a valid domain name ({exc})") from exc
    name = host.rstrip(".")  # "localhost." is the same name, fully qualified
    if not allow_private and (name == "localhost" or name.endswith(".localhost")):
        # RFC 6761: always loopback, whatever a resolver would answer.
        raise UnsafeUrl(f"Webhook URL resolves to a forbidden address ({host} is loopback)")
    try:
        # Every form the resolver would take as an address (127.1, 2130706433, 0x7f.1),
        # parsed without a DNS query.
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return url  # a name
    for info in infos:
        check_address(str(info[4][0]), allow_private=allow_private)
    return url


def check_one_spelling(url: str) -> str:
    """Return the URL unless it has a fragment (never sent) or ends with an empty query:
    either names the receiver of the URL without it, which a merchant could then
    register twice (one URL, one endpoint). For the URLs merchants register and save,
    not for an event's callback URL, which producers already send as they do."""
    if urlsplit(url).fragment or url.endswith(("#", "?")):
        raise UnsafeUrl("Webhook URL must not have a fragment (#...), which is never "
                        "sent, nor end with an empty query (?): either names the receiver "
                        "of the URL without it")
    return url


def validate_saved_url(url: str, *, allow_private: bool) -> str:
    """A URL a merchant registers or saves: one spelling per receiver, then the target's
    checks (``validate_url``)."""
    return validate_url(check_one_spelling(url), allow_private=allow_private)


def vetted_addresses(host: str, port: int, family: int = socket.AF_UNSPEC, *,
                     allow_private: bool = False) -> Sequence[AddrInfo]:
    """Resolve ``host`` once; its addresses if none is forbidden, else raise UnsafeUrl.

    One forbidden answer refuses the host rather than being skipped: a mix of public and
    private answers is what a rebinding server gives, and skipping would make delivery
    depend on which answer the resolver happens to return, where refusing gives the
    merchant the same error every time (and the save-time check the same verdict).
    """
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    named = not is_address(host)
    for info in infos:
        check_address(str(info[4][0]), allow_private=allow_private, named=named)
    return infos
