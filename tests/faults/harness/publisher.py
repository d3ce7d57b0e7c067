"""The producer: ``POST /internal/v1/events`` at a fixed rate, retrying what the API did
not acknowledge, and timing every call."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

from tests.faults.harness.stack import ADMIN_TOKEN, REQUEST_TIMEOUT

if TYPE_CHECKING:
    from tests.faults.harness.stack import Stack


@dataclass
class Publication:
    index: int
    reference: str
    notification_id: str | None = None
    # Every HTTP call: (time.monotonic() when it began, seconds it took, "201" / "503" /
    # "timeout" / an exception name).
    calls: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def started(self) -> float:
        return self.calls[0][0] if self.calls else 0.0


class Publisher:
    """``POST /internal/v1/events`` at a fixed rate, from a few threads, as producers do:
    a call that is not acknowledged with 201 (5xx, refused, timed out) is tried again."""

    def __init__(self, stack: Stack, partner_id: str,
                 callback_url: Callable[[int], str | None] | None = None,
                 give_up_after: float = 60.0) -> None:
        self.stack = stack
        self.partner_id = partner_id
        self.callback_url = callback_url
        self.give_up_after = give_up_after
        self.publications: list[Publication] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._stopping = threading.Event()
        stack.publishers.append(self)  # stopped by Stack.close, whatever happens

    def _publish(self, pub: Publication) -> None:
        body: dict[str, Any] = {"partnerId": self.partner_id, "type": "transaction.paid",
                                "reference": pub.reference,
                                "payload": {"amount": 100 + pub.index, "index": pub.index}}
        if self.callback_url is not None:
            url = self.callback_url(pub.index)
            if url:
                body["callbackUrl"] = url
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline and not self._stopping.is_set():
            began = time.monotonic()
            try:
                response = requests.post(
                    f"{self.stack.api_url}/internal/v1/events", json=body,
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    timeout=REQUEST_TIMEOUT)
            except requests.Timeout:
                pub.calls.append((began, time.monotonic() - began, "timeout"))
            except requests.RequestException as exc:
                pub.calls.append((began, time.monotonic() - began, type(exc).__name__))
            else:
                outcome = str(response.status_code)
                pub.calls.append((began, time.monotonic() - began, outcome))
                if outcome == "201":
                    pub.notification_id = str(response.json()["notificationId"])
                    return
            self._stopping.wait(0.2)

    def start(self, count: int, rate: float, threads: int = 6) -> None:
        """Publish ``count`` events at ``rate`` per second, in the background."""
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="publisher")
        self._pool = pool

        def feed() -> None:
            start = time.monotonic()
            for i in range(count):
                pause = start + i / rate - time.monotonic()
                if pause > 0 and self._stopping.wait(pause):
                    return
                pub = Publication(index=i, reference=f"FAULT-{i:05d}")
                with self._lock:
                    self.publications.append(pub)
                    self._futures.append(pool.submit(self._publish, pub))

        self._thread = threading.Thread(target=feed, name="publisher-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def join(self, timeout: float) -> None:
        """Wait (bounded) until every event was published or given up on."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            futures = list(self._futures)
        wait(futures, timeout=max(0.1, deadline - time.monotonic()))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def acknowledged(self) -> dict[str, Publication]:
        return {p.notification_id: p for p in self.publications if p.notification_id}

    def stats(self, window: tuple[float, float] | None = None) -> dict[str, Any]:
        """API figures; with ``window``, only for the calls made in it (an outage)."""
        calls = [(pub, call) for pub in self.publications for call in pub.calls
                 if window is None or window[0] <= call[0] <= window[1]]
        latencies = sorted(call[1] for _, call in calls)
        return {
            "calls": len(calls),
            "acknowledged": sum(1 for _, call in calls if call[2] == "201"),
            "unacknowledged": (sum(1 for p in self.publications if not p.notification_id)
                               if window is None else None),
            "errors": dict(Counter(call[2] for _, call in calls if call[2] != "201")),
            "max_latency_s": round(latencies[-1], 3) if latencies else 0.0,
            "p50_latency_s": round(latencies[len(latencies) // 2], 3) if latencies else 0.0,
        }
