"""The connection classes behind every POST: each hands its socket to the deadline
watchdog and dials only vetted addresses (where private URLs are allowed, vetted for
link-local ones only: ``netguard``). One pooled session per thread."""

from __future__ import annotations

import socket
import threading
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from deliverer.delivery.sending.http import deadline, dial


class _WatchedMixin:
    """Hands each connection's socket to the watchdog; dials vetted addresses."""

    allow_private = False
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = dial.dial_vetted(cast(HTTPConnection, self), self.allow_private)
        deadline.watch_socket(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline.watch_socket(self.sock)  # a reused keep-alive connection
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _PrivateHTTPConnection(_WatchedHTTPConnection):
    allow_private = True


class _PrivateHTTPSConnection(_WatchedHTTPSConnection):
    allow_private = True


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _PrivateHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PrivateHTTPConnection


class _PrivateHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PrivateHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """Lets the deadline watchdog find the socket of the request in flight, and dials only
    addresses the SSRF guard vetted (pools stay keyed by host name, and every connection
    in a host's pool was dialled to a vetted address of that host)."""

    pools: dict[str, type[HTTPConnectionPool]] = {
        "http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.pools)


class PrivateAdapter(GuardedAdapter):
    """Private addresses allowed (tests, the demo); link-local ones still refused."""

    pools = {"http": _PrivateHTTPPool, "https": _PrivateHTTPSPool}



_local = threading.local()


def pooled_session(allow_private_urls: bool) -> requests.Session:
    """One pooled session per thread (requests.Session is not documented thread-safe)."""
    key = (allow_private_urls,)
    sessions: dict[tuple[bool], requests.Session] = getattr(_local, "sessions", {})
    _local.sessions = sessions
    session = sessions.get(key)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # no proxies from the environment for webhook traffic
        adapter = (PrivateAdapter if allow_private_urls else GuardedAdapter)(
            pool_connections=64, pool_maxsize=8, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        sessions[key] = session
    return session
