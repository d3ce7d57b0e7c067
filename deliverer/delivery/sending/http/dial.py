"""Dialling a webhook host: only addresses the SSRF guard vetted, resolved once, with
one connect timeout for them all."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence

import urllib3.exceptions
from urllib3.connection import HTTPConnection
from urllib3.util.connection import allowed_gai_family

from deliverer.delivery.sending import netguard
from deliverer.errors import UnsafeUrl


class BlockedAddress(Exception):
    """The host resolves to a forbidden address; raised past urllib3's retry logic."""


def _check_peer(sock: socket.socket, allow_private: bool) -> None:
    peer = sock.getpeername()[0]
    try:
        # Not named: an address typed in the URL was refused before the dial.
        netguard.check_address(peer, allow_private=allow_private, named=True)
    except UnsafeUrl as exc:
        sock.close()
        raise BlockedAddress(str(exc)) from exc


def _connect_first(candidates: Sequence[netguard.AddrInfo], conn: HTTPConnection,
                   ) -> socket.socket:
    """urllib3's create_connection, over addresses already resolved and vetted, with one
    connect timeout for them all: per address, a host with several unreachable ones
    would hold the send for that many timeouts, which the lease cutoff does not allow
    for (runs.send_cutoff counts one connect timeout)."""
    error: OSError | None = None
    budget = conn.timeout if isinstance(conn.timeout, int | float) else None
    deadline = None if budget is None else time.monotonic() + budget
    for family, kind, proto, _canonname, sockaddr in candidates:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("connect timeout spent on earlier addresses")
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            if deadline is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            elif conn.timeout is None:
                sock.settimeout(None)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("getaddrinfo returned no address")


def dial_vetted(conn: HTTPConnection, allow_private: bool = False) -> socket.socket:
    """A connected socket to an address of ``conn.host`` the SSRF guard accepted.

    Checking only the peer after connect() still sent the SYN to an internal address, and
    whether that port refused or accepted showed in the attempt's error, which merchants
    read: a host rebinding to internal addresses could scan ports. Here the name is
    resolved once, every answer is checked before any socket exists, and only those
    sockaddrs are dialled, leaving no second lookup for a rebinding server to answer.
    TLS SNI, certificate checks and the Host header still use ``conn.host``.
    """
    try:
        candidates = netguard.vetted_addresses(conn._dns_host, conn.port, allowed_gai_family(),
                                               allow_private=allow_private)
    except UnsafeUrl as exc:
        raise BlockedAddress(str(exc)) from exc
    except socket.gaierror as exc:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
    except UnicodeError as exc:  # as urllib3: a label IDNA cannot encode
        raise urllib3.exceptions.LocationParseError(conn.host) from exc
    # The same wrapping as urllib3's own _new_conn, so classify_exception and urllib3's
    # retry logic see the exceptions they expect.
    try:
        sock = _connect_first(candidates, conn)
    except TimeoutError as exc:
        raise urllib3.exceptions.ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})",
        ) from exc
    except OSError as exc:
        raise urllib3.exceptions.NewConnectionError(
            conn, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", conn, conn.host, conn.port)
    _check_peer(sock, allow_private)  # defence in depth: catches a dial we did not vet
    return sock
