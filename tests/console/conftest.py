"""Fixtures of the operator console tests: the app on a live server, signed-in clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from celery import Celery

from deliverer.config import Settings
from tests.support.live_server import LiveServer, app_server
from tests.support.page_client import PageClient, csrf_of

OPERATOR_TOKEN = "console-operator-token-5f1c2a9e"


@pytest.fixture(scope="session")
def console_server(settings: Settings, celery_app: Celery) -> Iterator[LiveServer]:
    """``api.create_app`` with an admin token, on a threaded werkzeug server (loopback)."""
    with app_server(settings, celery_app, admin_token=OPERATOR_TOKEN) as server:
        yield server


class ConsoleClient(PageClient):
    """A browser-like client of the console (cookies kept)."""

    def login(self, token: str = OPERATOR_TOKEN) -> requests.Response:
        page = self.get("/console/login")
        return self.post("/console/login", {"csrf_token": csrf_of(page.text), "token": token})


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
