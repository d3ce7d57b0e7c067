"""A browser-like ``requests`` session for the server-rendered pages (the operator
console, the merchant portal): cookies kept, forms posted with their CSRF token."""

from __future__ import annotations

import re
from typing import Any

import requests

TIMEOUT = 30.0


def field_of(html: str, name: str) -> str:
    """The value of the form field ``name`` in ``html``."""
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in the page"
    return match.group(1)


def csrf_of(html: str) -> str:
    return field_of(html, "csrf_token")


class PageClient:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self.http = requests.Session()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return self.http.get(self.base_url + path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None,
             **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return self.http.post(self.base_url + path, data=data or {}, **kwargs)

    def submit(self, page_path: str, action_path: str,
               extra: dict[str, Any] | None = None) -> requests.Response:
        """Load ``page_path`` and post its form's CSRF token to ``action_path``."""
        page = self.get(page_path)
        assert page.status_code == 200, page.text
        return self.post(action_path, {"csrf_token": csrf_of(page.text), **(extra or {})})

    def close(self) -> None:
        self.http.close()


class PortalClient(PageClient):
    def open_link(self, url: str) -> requests.Response:
        """Open a portal link and press Continue."""
        page = self.http.get(url, timeout=TIMEOUT)
        assert page.status_code == 200, page.text
        return self.post("/portal/enter", {"token": field_of(page.text, "token"),
                                           "check": field_of(page.text, "check")})
