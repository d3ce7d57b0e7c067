"""The slow lane within a batch: a batch for an endpoint once slow sends within the cap,
what comes after a timeout is deferred, runs wait behind the admitted ones and stop after
a slow answer, and an endpoint gets as many runs as it is trusted with."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from datetime import timedelta

import pytest

from deliverer.delivery import batch
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sending import runs, slow_lane
from deliverer.models import NotificationStatus, Trigger, utcnow
from tests.delivery.slow_lane.helpers import (
    Clock,
    endpoint_key_of,
    mark_slow,
    mark_slow_on,
    send_result,
    slow_settings,
)
from tests.support import helpers as h
from tests.support import receiver as rx


class InFlight:
    """A receiver behaviour that answers after ``seconds`` and counts the most requests
    it held at once (counted out before it answers: a run's next request may follow at
    once)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, handler, receiver) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            receiver._stopping.wait(self.seconds)
        finally:
            with self.lock:
                self.now -= 1
        rx.ok()(handler, receiver)


def _batch_for(partner_id: str, url: str, count: int) -> list[str]:
    now = utcnow()
    return [h.insert_notification(partner_id, url, status=NotificationStatus.PENDING,
                                  next_attempt_at=now) for _ in range(count)]


def test_a_batch_for_an_endpoint_slow_once_sends_all_within_the_cap(settings, receiver):
    # One slow answer marks the endpoint slow for the window; it answers fast again, so
    # a batch for it is sent whole, at most the slow cap at once, none deferred.
    # A long lease and timeout: on a loaded machine every turn still comes before the
    # cutoff, and an answer is slow only past a second.
    s = slow_settings(settings).with_overrides(lease_seconds=60.0, total_timeout=5.0)
    answers = InFlight(0.05)
    slow_url = receiver.always("/slow", answers)
    fine_url = receiver.always("/fine", rx.ok())
    partner = h.new_partner(settings, slow_url)
    to_slow = _batch_for(partner.partner_id, slow_url, 12)
    to_fine = _batch_for(partner.partner_id, fine_url, 5)
    mark_slow(endpoint_key_of(to_slow[0]), s)

    outcome = batch.deliver_many(to_slow + to_fine, s)

    assert (outcome.sent, outcome.failed, outcome.deferred) == (17, 0, 0)
    assert all(h.sent(n) for n in to_slow + to_fine)
    assert answers.most <= s.slow_endpoint_concurrency < s.endpoint_concurrency
    assert len(receiver.requests("/slow")) == 12
    assert slow_lane.GATE.is_slow(endpoint_key_of(to_slow[0]), s)  # still in its window


@pytest.mark.parametrize("known_slow", [True, False], ids=["known-slow", "starts-hanging"])
def test_a_batch_defers_what_comes_after_a_timeout(settings, receiver, known_slow):
    # known-slow: the endpoint was slow and still is: the cap's two sends time out, and
    # the jobs waiting behind them are deferred. starts-hanging: not known as slow yet,
    # the whole batch is admitted, but in 2 runs of 3, not 8 (never heard answer fast);
    # the first send of each run times out and the jobs after it are deferred, not sent
    # one timeout after the other while they hold the send pool's threads. Deferred: no
    # request, no attempt. A long lease: every turn comes before the cutoff.
    s = slow_settings(settings).with_overrides(lease_seconds=60.0)
    assert s.endpoint_concurrency == 8
    slow_url = receiver.always("/slow", rx.sleep(1.5))
    fine_url = receiver.always("/fine", rx.ok())
    partner = h.new_partner(settings, slow_url)
    to_slow = _batch_for(partner.partner_id, slow_url, 6)
    to_fine = _batch_for(partner.partner_id, fine_url, 5)
    endpoint = endpoint_key_of(to_slow[0])
    if known_slow:
        mark_slow(endpoint, s)
    assert slow_lane.GATE.is_slow(endpoint, s) == known_slow

    before = utcnow()
    outcome = batch.deliver_many(to_slow + to_fine, s)

    assert (outcome.sent, outcome.failed, outcome.deferred) == (5, 2, 4)
    tried = [n for n in to_slow if h.attempts(n)]
    assert len(tried) == 2  # one per run
    for nid in tried:
        [attempt] = h.attempts(nid)
        assert attempt.error_payload["kind"] == "timeout"
    for nid in set(to_slow) - set(tried):
        row = h.notification(nid)
        assert row.status == NotificationStatus.PENDING and row.lease_token is None
        assert row.scheduled_for is None  # deferred (the sweep's), not handed back unsent
        assert row.next_attempt_at is not None
        assert row.next_attempt_at >= before + timedelta(seconds=s.total_timeout)
        assert row.attempt_count == 0
    assert all(h.sent(n) for n in to_fine)
    assert len(receiver.requests("/slow")) == 2
    assert slow_lane.GATE.in_flight(endpoint) == 0  # every ticket handed back


@pytest.mark.unit
def test_runs_wait_behind_the_admitted_and_stop_after_a_slow_answer(settings, monkeypatch):
    # No database: the runs' order of admission, with sends faked by their durations.
    s = slow_settings(settings).with_overrides(endpoint_concurrency=8)
    gate = slow_lane.EndpointGate(clock=Clock())
    monkeypatch.setattr(slow_lane, "GATE", gate)
    mark_slow_on(gate, KEY_7, s)
    slow_answers = {"n1": 2.0}  # beyond slow_send_seconds (1 s); the others take 10 ms
    sent: list[str] = []

    def fake_perform(job, ticket, settings):
        gate.started(ticket)
        result = send_result(slow_answers.get(job.notification_id, 0.01))
        gate.done(ticket, result, settings)
        sent.append(job.notification_id)
        return result

    monkeypatch.setattr(runs, "perform_admitted", fake_perform)
    jobs = [_job(f"n{i}", 7) for i in range(7)]
    admitted, refused = runs.admit_many(jobs, s)
    assert refused == [] and [t is not None for _, t in admitted] == [True, True] + [False] * 5
    monkeypatch.setattr(runs, "_executor", lambda size: _InOrder())

    sends = runs.perform_many(admitted, s)

    # Two runs: n0 n2 n4 n6 and n1 n3 n5. n1 answered in 2 s (slow): its run's waiting
    # jobs are deferred; n0 answered fast, so its run goes on within the cap.
    assert sent == ["n0", "n2", "n4", "n6", "n1"]
    assert sends.refused == {3, 5}
    assert [r is not None for r in sends.results] == [True, True, True, False, True, False,
                                                        True]
    # A second batch while the endpoint is slow and every ticket is out: deferred at once.
    gate2 = [gate.admit(KEY_7, s), gate.admit(KEY_7, s)]
    assert None not in gate2
    assert runs.admit_many([_job("m0", 7)], s) == ([], [_job("m0", 7)])


@pytest.mark.unit
def test_an_endpoint_refused_once_is_not_asked_again_in_the_batch(settings, monkeypatch):
    # A ticket freed between two admissions (another thread's send ended) must not go to
    # a later job: each of the endpoint's runs has to start with one of its tickets.
    s = slow_settings(settings)
    answers = iter([slow_lane.Ticket(KEY_7, 1), None, slow_lane.Ticket(KEY_7, 3)])
    asked: list[object] = []

    class Scripted:
        def admit(self, key, settings):
            asked.append(key)
            return next(answers)

    monkeypatch.setattr(slow_lane, "GATE", Scripted())
    jobs = [_job(f"n{i}", 7) for i in range(4)]

    admitted, refused = runs.admit_many(jobs, s)

    assert refused == [] and asked == [KEY_7, KEY_7]
    assert [t is not None for _, t in admitted] == [True, False, False, False]


@pytest.mark.unit
@pytest.mark.parametrize("trusted, runs_expected", [(True, 6), (False, 2)])
def test_an_endpoint_not_trusted_gets_as_many_runs_as_a_slow_one(settings, monkeypatch,
                                                                 trusted, runs_expected):
    s = slow_settings(settings).with_overrides(endpoint_concurrency=8)
    gate = slow_lane.EndpointGate(clock=Clock())
    monkeypatch.setattr(slow_lane, "GATE", gate)
    if trusted:
        ticket = gate.admit(KEY_7, s)
        assert ticket is not None
        gate.done(ticket, send_result(0.01), s)

    def fake_perform(job, ticket, settings):
        gate.started(ticket)
        gate.done(ticket, send_result(0.01), settings)
        return send_result(0.01)

    monkeypatch.setattr(runs, "perform_admitted", fake_perform)
    dealt: list[object] = []

    class Counting(_InOrder):
        def submit(self, fn, item):
            dealt.append(item)
            return super().submit(fn, item)

    monkeypatch.setattr(runs, "_executor", lambda size: Counting())
    admitted, refused = runs.admit_many([_job(f"n{i}", 7) for i in range(6)], s)
    assert refused == [] and all(t is not None for _, t in admitted)

    sends = runs.perform_many(admitted, s)

    assert len(dealt) == runs_expected
    assert sends.refused == set() and None not in sends.results


class _InOrder:
    """The send pool, run in order on this thread (the fake sends do not block)."""

    def submit(self, fn, item):
        future: Future[object] = Future()
        future.set_result(fn(item))
        return future


JOB_URL = "http://127.0.0.1:9/hook"
# The slow lane's key of ``_job(..., 7)``: endpoint 7 at its URL.
KEY_7 = slow_lane.key_for(7, JOB_URL)


def _job(nid: str, endpoint_id: int) -> DeliveryJob:
    return DeliveryJob(notification_id=nid, lease_token="t", url=JOB_URL,
                       body=b"{}", secrets=[], trigger=Trigger.AUTOMATIC,
                       endpoint_id=endpoint_id, endpoint_failing=False)
