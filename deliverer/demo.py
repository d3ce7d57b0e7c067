"""The newcomer's demo: a merchant with two endpoints, each subscribed to its own event
types (its webhook URL takes ``transaction.*``, a billing endpoint ``invoice.*``); the
first fails three times, the ladder retrying it (time-scaled), each attempt's error,
then delivery, while the billing endpoint, which nothing holds, is delivered at once."""

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
from deliverer.delivery.sending import signing
from deliverer.models import Attempt, Notification

# What the demo receiver answers to successive deliveries to the webhook URL; the
# billing endpoint always answers 200.
SCRIPT = [500, 503, 404, 200]
BILLING_PATH = "/billing"


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict[str, Any]] = []
        self.billing: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/webhooks"

    @property
    def billing_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{BILLING_PATH}"


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = {"headers": dict(self.headers), "body": body}
        with self.server.lock:
            if self.path == BILLING_PATH:
                self.server.billing.append(request)
                status = 200
            else:
                n = len(self.server.received)
                self.server.received.append(request)
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


def _post(base_url: str, path: str, headers: dict[str, str], body: dict[str, Any] | None,
          expected: tuple[str, ...], *, method: str = "POST",
          status: int = 201) -> dict[str, Any]:
    """``method`` ``body``; the JSON answer, which must be ``status`` holding
    ``expected``."""
    try:
        response = requests.request(method, f"{base_url}{path}", headers=headers, json=body,
                                    timeout=10)
    except requests.RequestException as exc:
        raise _Refused(f"{method} {path} failed: {exc}") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != status or not isinstance(answer, dict) or any(
            key not in answer for key in expected):
        raise _Refused(f"{method} {path} answered HTTP {response.status_code}: "
                       f"{response.text[:200]}")
    return answer


def _two_endpoints(base_url: str, api_key: str, receiver: _Receiver,
                   say: Any) -> dict[str, Any]:
    """The partner's webhook URL (its default endpoint) takes ``transaction.*`` only, and
    a billing endpoint of its own ``invoice.*``; returns the billing endpoint."""
    merchant = {"X-Api-Key": api_key}
    listed = _post(base_url, "/api/partner/v2/endpoints", merchant, None, ("data",),
                   method="GET", status=200)
    default = next(e for e in listed["data"] if e["isDefault"])
    _post(base_url, f"/api/partner/v2/endpoints/{default['id']}", merchant,
          {"eventTypes": ["transaction.*"]}, ("id",), method="PATCH", status=200)
    billing = _post(base_url, "/api/partner/v2/endpoints", merchant,
                    {"url": receiver.billing_url, "description": "Billing service",
                     "eventTypes": ["invoice.*"]}, ("id", "signingSecret"))
    say(f"endpoint {default['id']} (the webhook URL) subscribed to transaction.*")
    say(f"endpoint {billing['id']} at {receiver.billing_url} subscribed to invoice.*, "
        "with a signing secret of its own")
    return billing


def _publish(base_url: str, admin: dict[str, str], partner_id: str, event_type: str,
             reference: str, payload: dict[str, Any], say: Any) -> dict[str, Any]:
    published = _post(base_url, "/internal/v1/events", admin,
                      {"partnerId": partner_id, "type": event_type, "reference": reference,
                       "payload": payload}, ("notificationId", "sequence", "deliveries"))
    for delivery in published["deliveries"]:
        say(f"{event_type} published: notification {delivery['notificationId']} to "
            f"endpoint {delivery['endpointId']} (sequence {delivery['sequence']})")
    return published


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
            billing = _two_endpoints(base_url, partner["apiKey"], receiver, say)
            published = _publish(base_url, admin, partner["id"], "transaction.paid",
                                 "TXN-DEMO-0001", {"transaction_id": "TXN-DEMO-0001",
                                                   "amount": 1000, "currency": "XOF"}, say)
            _publish(base_url, admin, partner["id"], "invoice.settled", "INV-DEMO-0001",
                     {"invoice_id": "INV-DEMO-0001", "amount": 1000}, say)
        except _Refused as exc:
            say(f"the demo stops: {exc}")
            return False
        nid = published["notificationId"]

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
                    return ok and _billing_received(receiver, billing, say)
            time.sleep(0.2)
        say("timed out waiting for delivery")
        return False
    finally:
        receiver.shutdown()


def _billing_received(receiver: _Receiver, billing: dict[str, Any], say: Any) -> bool:
    """What the billing endpoint got meanwhile: the invoice event, at once, nothing else."""
    deadline = time.monotonic() + 10
    while True:
        with receiver.lock:
            got = list(receiver.billing)
        if got or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    types = [json.loads(r["body"])["type"] for r in got]
    ok = types == ["invoice.settled"] and _verify(billing["signingSecret"], got[0])
    say(f"billing endpoint received {types}, not held by the failing webhook URL; "
        f"signature {'verified' if ok else 'INVALID'} with its own secret")
    return ok
