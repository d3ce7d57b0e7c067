"""The newcomer's demo: a merchant endpoint that fails three times, the ladder retrying
it (time-scaled), each attempt's error, then delivery."""

from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from sqlalchemy import select

from deliverer.config import Settings
from deliverer.db import session_scope
from deliverer.delivery import signing
from deliverer.models import Attempt, Notification

# What the demo receiver answers to successive deliveries.
SCRIPT = [500, 503, 404, 200]


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/webhooks"


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            n = len(self.server.received)
            self.server.received.append({"headers": dict(self.headers), "body": body})
        status = SCRIPT[min(n, len(SCRIPT) - 1)]
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"merchant endpoint says no")

    def log_message(self, *args: Any) -> None:
        pass


def _verify(secret: str, request: dict[str, Any]) -> bool:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    expected = signing.sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]),
                            request["body"])
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


class _Refused(Exception):
    """The API did not answer a demo request as expected."""


def _post(base_url: str, path: str, admin: dict[str, str], body: dict[str, Any],
          expected: tuple[str, ...]) -> dict[str, Any]:
    """POST ``body``; the JSON answer, which must be a 201 holding ``expected``."""
    try:
        response = requests.post(f"{base_url}{path}", headers=admin, json=body, timeout=10)
    except requests.RequestException as exc:
        raise _Refused(f"POST {path} failed: {exc}") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 201 or not isinstance(answer, dict) or any(
            key not in answer for key in expected):
        raise _Refused(f"POST {path} answered HTTP {response.status_code}: "
                       f"{response.text[:200]}")
    return answer


def play(base_url: str, settings: Settings, timeout: float = 90.0) -> bool:
    receiver = _Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    say = lambda msg: print(f"[demo] {msg}", flush=True)  # noqa: E731
    try:
        say(f"merchant receiver at {receiver.url} will answer {SCRIPT}")
        say(f"ladder time scale {settings.time_scale}: 2m waits "
            f"{120 * settings.time_scale:.2f}s, 5m waits {300 * settings.time_scale:.2f}s")
        try:
            partner = _post(base_url, "/internal/v1/partners", admin,
                            {"name": "Demo Merchant", "webhookUrl": receiver.url},
                            ("id", "apiKey", "signingSecret"))
            say(f"partner {partner['id']} created; API key {partner['apiKey'][:12]}...")
            portal = _post(base_url, f"/internal/v1/partners/{partner['id']}/portal-sessions",
                           admin, {}, ("url",))
            say(f"its merchant portal, to open once within "
                f"{settings.portal_link_seconds / 60:.0f} min (later: deliverer portal-url "
                f"\"Demo Merchant\"): {portal['url']}")
            published = _post(
                base_url, "/internal/v1/events", admin,
                {"partnerId": partner["id"], "type": "transaction.paid",
                 "reference": "TXN-DEMO-0001",
                 "payload": {"amount": 1000, "currency": "XOF", "status": "successful"}},
                ("notificationId", "sequence"))
        except _Refused as exc:
            say(f"the demo stops: {exc}")
            return False
        nid = published["notificationId"]
        say(f"event published: notification {nid} (sequence {published['sequence']})")

        seen = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with session_scope() as session:
                notification = session.get(Notification, nid)
                attempts = session.scalars(
                    select(Attempt).where(Attempt.notification_id == nid)
                    .order_by(Attempt.started_at)
                ).all()
                assert notification is not None
                new = len(attempts) > seen
                for attempt in attempts[seen:]:
                    seen += 1
                    if attempt.success:
                        say(f"attempt {seen}: HTTP {attempt.response_status} -> delivered")
                    else:
                        err = attempt.error_payload or {}
                        say(f"attempt {seen}: {err.get('message')} [{err.get('kind')}]")
                        say(f"    hint: {err.get('hint')}")
                if new and notification.status == "FAILED" and notification.next_attempt_at:
                    wait = (notification.next_attempt_at - attempts[-1].started_at).total_seconds()
                    say(f"    status FAILED, retryAttempts={notification.retry_attempts}, "
                        f"next attempt in {wait:.2f}s")
                if notification.status == "SENT":
                    ok = _verify(partner["signingSecret"], receiver.received[-1])
                    say(f"status SENT after {notification.attempt_count} attempts; "
                        f"signature {'verified' if ok else 'INVALID'}; webhook-id "
                        f"{receiver.received[-1]['headers'].get('webhook-id')}")
                    say("body: " + json.loads(receiver.received[-1]["body"])["type"])
                    return ok
            time.sleep(0.2)
        say("timed out waiting for delivery")
        return False
    finally:
        receiver.shutdown()
