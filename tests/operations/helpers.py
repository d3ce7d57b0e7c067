"""Rows written directly for the operations tests, and running the real CLI."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from deliverer.config import Settings
from deliverer.db import session_scope
from deliverer.models import (
    Attempt,
    Notification,
    NotificationStatus,
    PartnerRequest,
    WebhookSettings,
    utcnow,
)
from tests.support import helpers as h

DELIVERER = Path(sys.executable).with_name("deliverer")
CLI_TIMEOUT = 120.0


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a user would have: the test's database and broker, nothing else of
    deliverer's from the calling shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DELIVERER_", "PROMETHEUS_"))
           and k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update({
        "DATABASE_URL": settings.database_url,
        "CELERY_BROKER_URL": settings.broker_url,
        "DELIVERER_DATA_DIR": str(settings.data_dir),
        "DELIVERER_ALLOW_PRIVATE_URLS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def run_cli(settings: Settings, *args: str, check: bool = True, input: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    """``deliverer ARGS...`` as a subprocess, as a user would run it."""
    result = subprocess.run([str(DELIVERER), *args], env=cli_env(settings, **env),
                            capture_output=True, text=True, timeout=CLI_TIMEOUT, input=input,
                            stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"deliverer {' '.join(args)} exited {result.returncode}\n"
                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def run_cli_on_a_terminal(settings: Settings, *args: str,
                          answer: str) -> subprocess.CompletedProcess[str]:
    """``deliverer ARGS...`` with a terminal (a pseudo-terminal) as stdin, on which
    ``answer`` is typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode() + b"\n")
        return subprocess.run([str(DELIVERER), *args], env=cli_env(settings), stdin=terminal,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT)
    finally:
        os.close(terminal)
        os.close(controller)


def failed(partner_id: str, url: str, *, created_ago: timedelta = timedelta(0),
           status: str = NotificationStatus.FAILED, held: bool = False) -> str:
    """A notification in ``status`` with no attempt ahead of it (nothing will send it)."""
    nid = h.insert_notification(partner_id, url, next_attempt_at=None, status=status)
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == nid).values(
            created_at=utcnow() - created_ago, held=held,
            retry_attempts=3 if status == NotificationStatus.FAILED else 0,
            latest_error_payload={"kind": "http_status", "message": "HTTP 500",
                                  "httpStatus": 500, "hint": "fix it"}))
    return nid


def add_attempt(nid: str, started_at: datetime, success: bool = False,
                url: str = "http://127.0.0.1:9/hook") -> None:
    with session_scope() as session:
        session.add(Attempt(notification_id=nid, trigger="automatic", url=url,
                            started_at=started_at, duration_ms=12, success=success,
                            response_status=200 if success else 500, response_body="x",
                            error_payload=None if success else {"kind": "http_status"}))


def attempt_count() -> int:
    with session_scope() as session:
        return len(list(session.scalars(select(Attempt.id))))


def audit(nid: str | None = None) -> list[tuple[str, str, str | None]]:
    with session_scope() as session:
        query = select(PartnerRequest).order_by(PartnerRequest.id)
        if nid is not None:
            query = query.where(PartnerRequest.notification_id == nid)
        return [(r.kind, r.outcome, r.api_key_id) for r in session.scalars(query)]


def head_and_held(partner_id: str, url: str) -> tuple[str, str]:
    """A failing endpoint's queue: its head on the ladder, and one held behind it."""
    head = h.insert_notification(partner_id, url, status=NotificationStatus.FAILED,
                                 next_attempt_at=utcnow() + timedelta(hours=1))
    return head, failed(partner_id, url, held=True)


def set_webhook_url(partner_id: str, url: str) -> None:
    """The merchant fixes the URL in the settings (the endpoint rows stay as they are)."""
    with session_scope() as session:
        session.execute(update(WebhookSettings).where(WebhookSettings.partner_id == partner_id)
                        .values(url=url))
