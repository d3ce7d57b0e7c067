"""Waiting for a condition the tests cannot be told about: poll it, within a bound."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_WAIT = 15.0


def wait_until(predicate: Callable[[], T], timeout: float = DEFAULT_WAIT, interval: float = 0.02,
               message: str = "condition", on_poll: Callable[[], object] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``.

    ``on_poll`` runs before each check (the tests use it to run the beat sweep).
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        if on_poll is not None:
            on_poll()
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; "
                                 f"last value: {last!r}")
        time.sleep(interval)
