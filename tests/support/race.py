"""Racing calls against each other from threads, for the concurrency tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

START_TIMEOUT = 30.0


def race(calls: Sequence[Callable[[], T]], *, threads: int | None = None,
         timeout: float = 120.0) -> list[T]:
    """Run every call from a thread of its own, all released at once by a barrier, and
    return what each returned, in the order of ``calls``.

    With ``threads`` fewer than the calls, that many start together and the others follow
    as threads come free. A call's exception is raised here, once every call has ended.
    """
    n = len(calls)
    threads = min(threads or n, n)
    barrier = threading.Barrier(threads)

    def run(index: int, call: Callable[[], T]) -> T:
        if index < threads:
            # A broken barrier (a thread slow to start) still runs the call, only not
            # quite at the same moment as the others.
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(START_TIMEOUT)
        return call()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(run, i, call) for i, call in enumerate(calls)]
        return [future.result(timeout=timeout) for future in futures]
