"""The real API on a real socket: ``api.create_app`` behind werkzeug's threaded server.

Tests talk to it with ``requests`` over loopback, so every request goes through the
whole WSGI stack (body limits, error handlers, one DB session per request) in its own
server thread, which is what the concurrency tests need.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

import deliverer.config
from deliverer.config import Settings

REQUEST_TIMEOUT = 30.0


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_error(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class LiveServer:
    app: Flask
    server: BaseWSGIServer
    thread: threading.Thread
    base_settings: Settings
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def settings(self) -> Settings:
        return self.app.config["DELIVERER_SETTINGS"]

    @contextmanager
    def overridden(self, **changes: Any) -> Iterator[Settings]:
        """Change the settings the API reads (and the process-wide ones the worker reads)."""
        with self._lock:
            saved_app = self.app.config["DELIVERER_SETTINGS"]
            saved_process = deliverer.config.get_settings()
            changed = saved_app.with_overrides(**changes)
            self.app.config["DELIVERER_SETTINGS"] = changed
            process_changes = {k: v for k, v in changes.items() if k != "admin_token"}
            if process_changes:
                deliverer.config.set_settings(saved_process.with_overrides(**process_changes))
        try:
            yield changed
        finally:
            with self._lock:
                self.app.config["DELIVERER_SETTINGS"] = saved_app
                if process_changes:
                    deliverer.config.set_settings(saved_process)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def start_live_server(app: Flask, base_settings: Settings) -> LiveServer:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    server.daemon_threads = True  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="live-api", daemon=True)
    thread.start()
    return LiveServer(app=app, server=server, thread=thread, base_settings=base_settings)


class ApiClient:
    """``requests`` against the live server, with one partner's credentials.

    ``auth`` is ``"x-api-key"`` (seeds 000, 001) or ``"bearer"`` (seeds 002, 004). Each
    call uses its own connection, so one client can be shared by many threads.
    """

    def __init__(self, base_url: str, key: str | None = None, auth: str = "x-api-key"):
        self.base_url = base_url
        self.key = key
        self.auth = auth

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.key is not None:
            if self.auth == "bearer":
                headers["Authorization"] = f"Bearer {self.key}"
            else:
                headers["X-Api-Key"] = self.key
        headers.update(extra or {})
        return headers

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return requests.request(method, self.base_url + path, headers=self.headers(headers),
                                **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def as_key(self, key: str | None, auth: str | None = None) -> ApiClient:
        return ApiClient(self.base_url, key, auth or self.auth)


@contextmanager
def app_server(settings: Settings, celery_app: Any, **overrides: Any) -> Iterator[LiveServer]:
    """``api.create_app`` with ``overrides`` (an admin token...) on a live server.

    create_app installs its settings process-wide and makes its own Celery app the
    default; the rest of the suite runs on the session's, put back here."""
    import api

    app = api.create_app(settings.with_overrides(**overrides))
    deliverer.config.set_settings(settings)
    celery_app.set_current()
    celery_app.set_default()
    server = start_live_server(app, settings)
    try:
        yield server
    finally:
        server.stop()
