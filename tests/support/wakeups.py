"""Wake-ups taken by hand in tests (PostgreSQL): as they are sent, without the broker."""

from __future__ import annotations

import threading
import time
from typing import Any

import deliverer
from deliverer.broker import dispatch
from deliverer.config import Settings
from deliverer.delivery.wakeups import wake_groups, wakes_together


def wake_ups(published_tasks: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The wake-ups sent: (task, endpoint or group)."""
    return [(t["task"], t["args"][0]) for t in published_tasks
            if t["task"] in (dispatch.DELIVER_DUE, dispatch.DELIVER_GROUP)]


def take(wake_up: tuple[str, int], settings: Settings) -> None:
    task, arg = wake_up
    if task == dispatch.DELIVER_GROUP:
        wake_groups.deliver_group(arg, settings)
    else:
        wakes_together.deliver_due(arg, settings)


def race_publishes(published_tasks: list[dict[str, Any]], settings: Settings,
                   partner_ids: list[str]) -> list[str]:
    """60 publishes, round-robin over the partners, in a thread, while every wake-up sent
    is taken here by hand, as it is sent (the broker's message is not needed)."""
    published: list[str] = []
    done = threading.Event()

    def publish() -> None:
        try:
            for i in range(60):
                published.append(deliverer.publish_event(
                    partner_ids[i % len(partner_ids)], "t", f"r{i}", {}).notification_id)
        finally:
            done.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    taken = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wakes = wake_ups(published_tasks)
        if taken < len(wakes):
            take(wakes[taken], settings)
            taken += 1
        elif done.is_set():
            break
        else:
            time.sleep(0.001)
    publisher.join(10)
    return published
