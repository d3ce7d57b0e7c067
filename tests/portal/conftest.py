"""Fixtures of the merchant portal tests: the app on a live server, partners, and
browser-like clients signed in through a portal link."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from celery import Celery

from deliverer.config import Settings
from deliverer.partners.service import NewPartner
from tests.support import helpers as h
from tests.support.live_server import ApiClient, LiveServer, app_server
from tests.support.page_client import PortalClient

ADMIN_TOKEN = "portal-admin-token-8d2e41b7"


@pytest.fixture(scope="session")
def portal_server(settings: Settings, celery_app: Celery) -> Iterator[LiveServer]:
    """The app with an admin token, on a threaded werkzeug server (loopback)."""
    with app_server(settings, celery_app, admin_token=ADMIN_TOKEN) as server:
        yield server


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
