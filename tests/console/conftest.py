"""Fixtures of the operator console tests: the app on a live server, signed-in clients."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from celery import Celery

from deliverer.config import Settings
from tests.support.live_server import LiveServer, app_server

OPERATOR_TOKEN = "console-operator-token-5f1c2a9e"
TIMEOUT = 30.0


@pytest.fixture(scope="session")
def console_server(settings: Settings, celery_app: Celery) -> Iterator[LiveServer]:
    """``api.create_app`` with an admin token, on a threaded werkzeug server (loopback)."""
    with app_server(settings, celery_app, admin_token=OPERATOR_TOKEN) as server:
        yield server


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


class ConsoleClient:
    """A browser-like ``requests`` session against the console (cookies kept)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.http = requests.Session()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return self.http.get(self.base_url + path, **kwargs)

    def post(self, path: str, data: dict[str, str] | None = None,
             **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return self.http.post(self.base_url + path, data=data or {}, **kwargs)

    def login(self, token: str = OPERATOR_TOKEN) -> requests.Response:
        page = self.get("/console/login")
        return self.post("/console/login", {"csrf_token": csrf_of(page.text), "token": token})

    def submit(self, page_path: str, action_path: str,
               extra: dict[str, str] | None = None) -> requests.Response:
        """Load ``page_path`` and post its form's CSRF token to ``action_path``."""
        page = self.get(page_path)
        assert page.status_code == 200, page.text
        return self.post(action_path, {"csrf_token": csrf_of(page.text), **(extra or {})})

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def console(console_server: LiveServer) -> Iterator[Callable[[], ConsoleClient]]:
    """``console()`` makes a fresh, signed-out client."""
    made: list[ConsoleClient] = []

    def make() -> ConsoleClient:
        client = ConsoleClient(console_server.url)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def operator(console: Callable[[], ConsoleClient]) -> ConsoleClient:
    client = console()
    response = client.login()
    assert response.status_code == 200 and "Signed in." in response.text, response.text
    return client
