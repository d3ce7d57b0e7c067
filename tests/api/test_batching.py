"""api.batching.Coalescer: concurrent requests run as batches, each gets its own answer."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from deliverer.batching import Coalescer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.unit


class Recorder:
    """A batch function that records its batches and can be held while one runs."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.running = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.running.set()
        assert self.release.wait(10)
        return [item * 10 for item in items]


def _submit_all(coalescer: Coalescer[int, int], items: list[int]
                ) -> tuple[list[threading.Thread], dict[int, object]]:
    answers: dict[int, object] = {}

    def call(item: int) -> None:
        try:
            answers[item] = coalescer.submit(item)
        except Exception as exc:
            answers[item] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in items]
    for thread in threads:
        thread.start()
    return threads, answers


def _wait_queued(coalescer: Coalescer[int, int], count: int) -> None:
    wait_until(lambda: coalescer._queue.qsize() >= count, 10.0, interval=0.01,
               message=f"{count} requests queued")


def test_a_lone_request_runs_at_once_and_alone() -> None:
    run = Recorder()
    coalescer = Coalescer("test", run)
    assert coalescer.submit(7) == 70
    assert coalescer.submit(8) == 80
    assert run.batches == [[7], [8]]


def test_requests_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    run = Recorder()
    coalescer = Coalescer("test", run)
    run.release.clear()
    first, first_answer = _submit_all(coalescer, [1])
    assert run.running.wait(10)
    # Five more arrive while the first batch is in the database.
    waiting, answers = _submit_all(coalescer, [2, 3, 4, 5, 6])
    _wait_queued(coalescer, 5)
    run.release.set()
    for thread in first + waiting:
        thread.join(10)
    assert run.batches[0] == [1]
    assert sorted(run.batches[1]) == [2, 3, 4, 5, 6]
    assert len(run.batches) == 2
    assert first_answer == {1: 10}
    assert answers == {i: i * 10 for i in [2, 3, 4, 5, 6]}


def test_a_batch_is_at_most_max_batch_requests() -> None:
    run = Recorder()
    coalescer = Coalescer("test", run, max_batch=3)
    run.release.clear()
    first, _ = _submit_all(coalescer, [0])
    assert run.running.wait(10)
    waiting, answers = _submit_all(coalescer, list(range(1, 8)))
    _wait_queued(coalescer, 7)
    run.release.set()
    for thread in first + waiting:
        thread.join(10)
    assert [len(b) for b in run.batches] == [1, 3, 3, 1]
    assert answers == {i: i * 10 for i in range(1, 8)}


def test_a_failed_batch_answers_each_of_its_requests_with_the_error() -> None:
    calls: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return list(items)

    coalescer = Coalescer("test", run)
    with pytest.raises(ConnectionError, match="went away"):
        coalescer.submit(1)
    # The thread survives: the next request is served.
    assert coalescer.submit(2) == 2


def test_a_batch_function_that_loses_answers_is_an_error_not_a_hang() -> None:
    coalescer: Coalescer[int, int] = Coalescer("test", lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 requests"):
        coalescer.submit(1)
