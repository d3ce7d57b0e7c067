"""The portal-sessions collection's two views' common part: a link for a partner, and
signing all of its sessions out (the internal API and the Partner API call them)."""

from __future__ import annotations

from typing import Any

from flask import current_app, request

from api.db import get_session
from deliverer.config import Settings
from deliverer.portal import sessions


def _settings() -> Settings:
    settings: Settings = current_app.config["DELIVERER_SETTINGS"]
    return settings


def new_link(partner_id: str, *, read_only: bool, issued_by: str,
             api_key_id: str | None = None) -> dict[str, Any]:
    settings = _settings()
    link = sessions.issue_link(get_session(), settings, partner_id, read_only=read_only,
                               issued_by=issued_by, api_key_id=api_key_id)
    return {"url": sessions.link_url(settings.portal_base_url or request.host_url, link.token),
            "expires_at": link.token_expires_at, "session_expires_at": link.expires_at,
            "read_only": link.read_only}


def sign_out_all(partner_id: str) -> dict[str, int]:
    return {"signed_out": sessions.sign_out_all(get_session(), partner_id)}
