"""The receiver as the witness: it answers every request by a *plan* keyed on its event and
attempt number (deterministic for a seed, whatever the order of arrival), and remembers
each answer (2xx or not). The plans themselves are in ``plans``."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from tests.support import receiver as rcv
from tests.support.receiver import Receiver


@dataclass(frozen=True)
class Answer:
    webhook_id: str
    n: int  # 0 for the first request carrying this webhook-id
    label: str
    success: bool  # the receiver answered 2xx, completely and within the deadline
    at: float  # time.monotonic() on arrival


# A plan decides how the receiver answers the n-th request of an event (see Witness):
# (label, behaviour, whether that is a delivered 2xx).
Plan = Callable[[str, int], tuple[str, rcv.Behaviour, bool]]


class Witness:
    """The receiver, answering by plan and remembering every answer.

    A plan is keyed on the *event* (the ``index`` the Publisher puts in each payload), so
    with a fixed seed each event meets the same behaviours in every run, whatever its
    notification id; requests without one are keyed on their webhook-id.
    """

    def __init__(self, receiver: Receiver, plan: Plan) -> None:
        self.receiver = receiver
        self.plan = plan
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._seen: Counter[str] = Counter()
        self.keys: dict[str, str] = {}  # webhook-id -> the key the plan was given

    def url(self, path: str = "/hook") -> str:
        return self.receiver.program(path, (), self._dispatch)

    def _key(self, webhook_id: str) -> str:
        if webhook_id in self.keys:
            return self.keys[webhook_id]
        key = webhook_id
        # The receiver logged this request (body included) just before calling us.
        for recorded in reversed(self.receiver.requests()):
            if recorded.headers.get("webhook-id") == webhook_id:
                with suppress(ValueError, KeyError, TypeError):
                    key = f"event-{json.loads(recorded.body)['data']['index']}"
                break
        self.keys[webhook_id] = key
        return key

    def _dispatch(self, handler: Any, receiver: Receiver) -> None:
        webhook_id = handler.headers.get("webhook-id") or ""
        arrived = time.monotonic()
        with self._lock:
            n = self._seen[webhook_id]
            self._seen[webhook_id] += 1
            key = self._key(webhook_id)
        label, behaviour, success = self.plan(key, n)
        with self._lock:
            self._answers.append(Answer(webhook_id, n, label, success, arrived))
        behaviour(handler, receiver)

    def answers(self) -> dict[str, list[Answer]]:
        by_id: dict[str, list[Answer]] = defaultdict(list)
        with self._lock:
            for answer in self._answers:
                by_id[answer.webhook_id].append(answer)
        return by_id

    def requests_by_id(self) -> Counter[str]:
        """How many requests the receiver itself logged per webhook-id."""
        logged = self.receiver.requests()
        assert len(logged) < rcv.MAX_REQUESTS, "the receiver's log is full: witness incomplete"
        return Counter(r.headers.get("webhook-id", "") for r in logged)
