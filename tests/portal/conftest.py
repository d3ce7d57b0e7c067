"""Fixtures of the merchant portal tests: the app on a live server, partners, and
browser-like clients signed in through a portal link."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from celery import Celery

from deliverer.config import Settings
from deliverer.partners.service import NewPartner
from tests.support import helpers as h
from tests.support.live_server import ApiClient, LiveServer, app_server

ADMIN_TOKEN = "portal-admin-token-8d2e41b7"
TIMEOUT = 30.0


@pytest.fixture(scope="session")
def portal_server(settings: Settings, celery_app: Celery) -> Iterator[LiveServer]:
    """The app with an admin token, on a threaded werkzeug server (loopback)."""
    with app_server(settings, celery_app, admin_token=ADMIN_TOKEN) as server:
        yield server


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def field_of(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in the page"
    return match.group(1)


class PortalClient:
    """A browser-like ``requests`` session against the portal (cookies kept)."""

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

    def open_link(self, url: str) -> requests.Response:
        """Open a portal link and press Continue."""
        page = self.http.get(url, timeout=TIMEOUT)
        assert page.status_code == 200, page.text
        return self.http.post(self.base_url + "/portal/enter",
                              data={"token": field_of(page.text, "token"),
                                    "check": field_of(page.text, "check")},
                              timeout=TIMEOUT)

    def submit(self, page_path: str, action_path: str,
               extra: dict[str, str] | None = None) -> requests.Response:
        """Load ``page_path`` and post its form's CSRF token to ``action_path``."""
        page = self.get(page_path)
        assert page.status_code == 200, page.text
        return self.post(action_path, {"csrf_token": csrf_of(page.text), **(extra or {})})

    def close(self) -> None:
        self.http.close()


@dataclass
class Merchant:
    partner: NewPartner
    api: ApiClient

    @property
    def partner_id(self) -> str:
        return self.partner.partner_id


@pytest.fixture
def admin(portal_server: LiveServer) -> ApiClient:
    return ApiClient(portal_server.url, ADMIN_TOKEN, auth="bearer")


@pytest.fixture
def merchant(settings: Settings, portal_server: LiveServer) -> Callable[..., Merchant]:
    """``merchant(url, name=...)``: a partner and its API client."""
    def make(url: str | None, name: str = "Portal Shop") -> Merchant:
        partner = h.new_partner(settings, url, name=name)
        return Merchant(partner, ApiClient(portal_server.url, partner.api_key))

    return make


@pytest.fixture
def portal(portal_server: LiveServer, admin: ApiClient
           ) -> Iterator[Callable[..., PortalClient]]:
    """``portal(partner_id, read_only=False)``: a client signed in to that partner's
    portal through a link from the internal API; ``portal(None)``: signed out."""
    made: list[PortalClient] = []

    def make(partner_id: str | None, read_only: bool = False) -> PortalClient:
        client = PortalClient(portal_server.url)
        made.append(client)
        if partner_id is not None:
            link = admin.post(f"/internal/v1/partners/{partner_id}/portal-sessions",
                              json={"readOnly": read_only})
            assert link.status_code == 201, link.text
            entered = client.open_link(link.json()["url"])
            assert entered.status_code == 200 and "Your webhook endpoints" in entered.text, \
                entered.text
        return client

    yield make
    for client in made:
        client.close()
