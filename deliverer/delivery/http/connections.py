"""The connection classes behind every POST: each hands its socket to the deadline
watchdog, and guarded ones (every send unless private URLs are allowed) dial only vetted
addresses. One pooled session per thread."""

from __future__ import annotations

import socket
import threading
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from deliverer.delivery.http import deadline, dial


class _WatchedMixin:
    """Hands each connection's socket to the watchdog; guarded ones dial vetted addresses."""

    guarded = False
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = (
            dial.dial_vetted(cast(HTTPConnection, self)) if self.guarded
            else super()._new_conn())  # type: ignore[misc]
        deadline.watch_socket(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline.watch_socket(self.sock)  # a reused keep-alive connection
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnection(_WatchedHTTPConnection):
    guarded = True


class _GuardedHTTPSConnection(_WatchedHTTPSConnection):
    guarded = True


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class WatchedAdapter(HTTPAdapter):
    """Lets the deadline watchdog find the socket of the request in flight."""

    pools: dict[str, type[HTTPConnectionPool]] = {
        "http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.pools)


class GuardedAdapter(WatchedAdapter):
    """Also dials only addresses the SSRF guard vetted (pools stay keyed by host name, and
    every connection in a host's pool was dialled to a vetted address of that host)."""

    pools = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}



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
        adapter: HTTPAdapter = (
            WatchedAdapter(pool_connections=64, pool_maxsize=8, max_retries=0)
            if allow_private_urls
            else GuardedAdapter(pool_connections=64, pool_maxsize=8, max_retries=0)
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        sessions[key] = session
    return session
