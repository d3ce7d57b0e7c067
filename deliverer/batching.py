"""Concurrent calls of one operation, run as batches (group commit).

Threads hand their items to a ``Coalescer`` instead of each running the operation: a
runner thread takes whatever items are waiting and runs them as one call, and hands each
caller its own outcome. An item that finds a runner idle is run at once, alone, so an
idle process adds no wait; batches form only while the runners are busy, which is when
the callers would otherwise queue for the database anyway. Used by the API's request
threads (manual retries: one transaction for the batch) and by the worker's delivery
tasks (one claim and one record for the messages running at the same moment).

With several runners, one batch can be in the database while the next is being
collected or sent. The runner threads are started on first use in each process: a
process forked after the object was created (gunicorn's ``--preload``, a prefork pool)
inherits the object but not its threads.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``submit(item)`` returns ``run([..., item, ...])``'s result for ``item``.

    ``run`` gets up to ``max_batch`` items in arrival order and must return one result
    per item, in that order. If it raises, every request of the batch gets the exception.
    """

    def __init__(self, name: str, run: Callable[[Sequence[T]], Sequence[R]],
                 max_batch: int = 64, runners: int = 1) -> None:
        self.name = name
        self._run = run
        self._max_batch = max_batch
        self._runners = runners
        self._queue: queue.SimpleQueue[tuple[T, Future[R]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def submit(self, item: T) -> R:
        self._ensure_thread()
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future.result()

    def submit_many(self, items: Sequence[T]) -> list[R]:
        """``submit`` of each item, handed over together (one batch or a few)."""
        self._ensure_thread()
        futures: list[Future[R]] = []
        for item in items:
            future: Future[R] = Future()
            self._queue.put((item, future))
            futures.append(future)
        return [future.result() for future in futures]

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                # A forked child inherits the attribute but not the thread, nor (safely)
                # the queue: start both afresh.
                self._queue = queue.SimpleQueue()
                for k in range(self._runners):
                    threading.Thread(target=self._loop, name=f"batch-{self.name}-{k}",
                                     daemon=True).start()
                self._pid = os.getpid()

    def _loop(self) -> None:
        jobs = self._queue
        while True:
            batch = [jobs.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(jobs.get_nowait())
                except queue.Empty:
                    break
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[T, Future[R]]]) -> None:
        try:
            results = self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for "
                                   f"{len(batch)} requests")
        except BaseException as exc:  # every waiting request answers with it
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
