"""The slow lane: a hanging endpoint gets a few sends in flight per worker, no more; a
batch's others wait their turn behind them while it answers fast, and are deferred (no
request, no attempt) and delivered later, once each, when it does not."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import Future
from datetime import timedelta

import pytest
from sqlalchemy.exc import OperationalError

from deliverer import metrics
from deliverer.config import Settings
from deliverer.db import in_transaction, session_scope
from deliverer.delivery import batch, service
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sending import runs, slow_lane
from deliverer.delivery.sending.sender import SendResult
from deliverer.delivery.service import ClaimState
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.models import NotificationStatus, Trigger, utcnow
from deliverer.partners import webhook_settings
from deliverer.publishing.api import publish_events
from deliverer.scheduling.tasks import sweep_due
from tests.support import helpers as h
from tests.support import receiver as rx

SLOW = dict(slow_send_seconds=1.0, slow_endpoint_concurrency=2, slow_window=60.0,
            total_timeout=0.5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(settings: Settings) -> Settings:
    return settings.with_overrides(**SLOW)


def _result(seconds: float, kind: FailureKind | None = None) -> SendResult:
    return SendResult(started_at=utcnow(), duration_ms=int(seconds * 1000),
                      success=kind is None,
                      error=error_payload(kind, "x") if kind is not None else None)


@pytest.mark.unit
def test_a_healthy_endpoint_is_never_refused(settings):
    gate, s = slow_lane.EndpointGate(Clock()), _settings(settings)
    tickets = [gate.admit(7, s) for _ in range(50)]
    assert all(t is not None for t in tickets)


@pytest.mark.unit
def test_sends_in_flight_too_long_make_the_endpoint_slow(settings):
    clock = Clock()
    gate, s = slow_lane.EndpointGate(clock), _settings(settings)
    first = [gate.admit(7, s) for _ in range(3)]
    for ticket in first:
        assert ticket is not None
        gate.started(ticket)
    clock.now += 1.0  # they have now been in flight for slow_send_seconds
    assert gate.is_slow(7, s)
    assert gate.admit(7, s) is None  # 3 in flight >= cap 2
    assert gate.admit(8, s) is not None  # other endpoints are not concerned
    for ticket in first[:2]:
        assert ticket is not None
        gate.done(ticket, _result(1.0, FailureKind.TIMEOUT), s)
    # One still in flight: below the cap, one more may go.
    assert gate.admit(7, s) is not None
    assert gate.admit(7, s) is None


@pytest.mark.unit
def test_sends_waiting_their_turn_are_not_timed(settings):
    """A batch's jobs queue behind the endpoint's earlier POSTs: the queue is not slowness."""
    clock = Clock()
    gate, s = slow_lane.EndpointGate(clock), _settings(settings)
    waiting = [gate.admit(7, s) for _ in range(3)]
    clock.now += 5.0
    assert not gate.is_slow(7, s)
    assert waiting[0] is not None and waiting[1] is not None
    gate.started(waiting[0])
    clock.now += 0.5
    gate.started(waiting[1])  # the later start does not hide the earlier one
    clock.now += 0.5
    assert gate.is_slow(7, s)  # the first POST has run for slow_send_seconds
    gate.done(waiting[0], _result(0.9), s)
    assert gate.is_slow(7, s)  # it was slow: the window holds
    # A ticket whose POST is called off is forgotten without judging the endpoint.
    other = gate.admit(8, s)
    assert other is not None
    clock.now += 10.0
    gate.done(other, None, s)
    assert not gate.is_slow(8, s)
    assert gate.admit(8, s) is not None


@pytest.mark.unit
def test_a_timeout_keeps_the_endpoint_slow_for_the_window_only(settings):
    clock = Clock()
    gate, s = slow_lane.EndpointGate(clock), _settings(settings)
    ticket = gate.admit("http://x/hook", s)
    assert ticket is not None
    gate.done(ticket, _result(0.5, FailureKind.TIMEOUT), s)
    assert gate.is_slow("http://x/hook", s)
    held = [gate.admit("http://x/hook", s) for _ in range(3)]
    assert [t is not None for t in held] == [True, True, False]
    for t in held[:2]:
        assert t is not None
        gate.done(t, _result(0.01), s)  # fast successes do not end the window early
    clock.now += 59.0
    assert gate.is_slow("http://x/hook", s)
    clock.now += 1.0
    assert not gate.is_slow("http://x/hook", s)
    assert all(gate.admit("http://x/hook", s) is not None for _ in range(5))


@pytest.mark.unit
def test_fast_failures_do_not_make_an_endpoint_slow(settings):
    gate, s = slow_lane.EndpointGate(Clock()), _settings(settings)
    for _ in range(10):
        ticket = gate.admit(7, s)
        assert ticket is not None
        gate.done(ticket, _result(0.01, FailureKind.HTTP_STATUS), s)
    assert not gate.is_slow(7, s)


def _mark_slow(key: slow_lane.Key, settings: Settings) -> None:
    ticket = slow_lane.GATE.admit(key, settings)
    assert ticket is not None
    slow_lane.GATE.done(ticket, _result(0.5, FailureKind.TIMEOUT), settings)


def _endpoint_of(nid: str) -> slow_lane.Key:
    """The slow lane's key of the notification's endpoint (at its URL)."""
    row = h.notification(nid)
    assert row.endpoint_id is not None and row.url is not None
    return slow_lane.key_for(row.endpoint_id, row.url)


def test_a_delivery_beyond_the_cap_is_deferred_without_a_request(settings, receiver):
    # Sends hang until the 2 s timeout; in flight for 0.3 s makes the endpoint slow.
    s = _settings(settings).with_overrides(total_timeout=2.0, slow_send_seconds=0.3)
    slow_url = receiver.always("/slow", rx.sleep(3.0))
    fine_url = receiver.always("/fine", rx.ok())
    partner = h.new_partner(settings, slow_url)
    now = utcnow()
    first, second, third = (h.insert_notification(partner.partner_id, slow_url,
                                                  status=NotificationStatus.PENDING,
                                                  next_attempt_at=now) for _ in range(3))
    healthy = h.insert_notification(partner.partner_id, fine_url, status=NotificationStatus.PENDING,
                                    next_attempt_at=now)

    outcomes: dict[str, service.AttemptOutcome] = {}
    threads = [threading.Thread(target=lambda n=n: outcomes.update({n: service.deliver(n, s)}))
               for n in (first, second)]
    for t in threads:
        t.start()
    receiver.wait_for(2, "/slow")
    # Both sends hang; once they have been in flight for slow_send_seconds the endpoint
    # is slow, and it already has its 2 sends in flight here.
    h.wait_until(lambda: slow_lane.GATE.is_slow(_endpoint_of(first), s),
                 message="endpoint seen as slow")
    before = utcnow()
    deferred = service.deliver(third, s)
    assert deferred.state == ClaimState.DEFERRED
    row = h.notification(third)
    assert row.status == NotificationStatus.PENDING
    assert row.lease_token is None and row.lease_expires_at is None
    assert row.scheduled_for is None  # the beat sweep hands it over again when due
    assert row.next_attempt_at is not None
    # A timeout or two later: by then the sends in flight are over, one way or the other.
    assert before + timedelta(seconds=2.0) <= row.next_attempt_at
    assert row.next_attempt_at <= utcnow() + timedelta(seconds=4.0)
    assert row.attempt_count == 0 and h.attempts(third) == []

    # Other endpoints go on while the slow one's sends hang.
    assert service.deliver(healthy, s).status == NotificationStatus.SENT
    for t in threads:
        t.join(timeout=10)
    assert [r.headers["webhook-id"] for r in receiver.requests("/slow")].count(third) == 0
    for nid in (first, second):
        [attempt] = h.attempts(nid)
        assert attempt.error_payload["kind"] == "timeout"


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
    s = _settings(settings).with_overrides(lease_seconds=60.0, total_timeout=5.0)
    answers = InFlight(0.05)
    slow_url = receiver.always("/slow", answers)
    fine_url = receiver.always("/fine", rx.ok())
    partner = h.new_partner(settings, slow_url)
    to_slow = _batch_for(partner.partner_id, slow_url, 12)
    to_fine = _batch_for(partner.partner_id, fine_url, 5)
    _mark_slow(_endpoint_of(to_slow[0]), s)

    outcome = batch.deliver_many(to_slow + to_fine, s)

    assert (outcome.sent, outcome.failed, outcome.deferred) == (17, 0, 0)
    assert all(h.sent(n) for n in to_slow + to_fine)
    assert answers.most <= s.slow_endpoint_concurrency < s.endpoint_concurrency
    assert len(receiver.requests("/slow")) == 12
    assert slow_lane.GATE.is_slow(_endpoint_of(to_slow[0]), s)  # still in its window


@pytest.mark.parametrize("known_slow", [True, False], ids=["known-slow", "starts-hanging"])
def test_a_batch_defers_what_comes_after_a_timeout(settings, receiver, known_slow):
    # known-slow: the endpoint was slow and still is: the cap's two sends time out, and
    # the jobs waiting behind them are deferred. starts-hanging: not known as slow yet,
    # the whole batch is admitted, but in 2 runs of 3, not 8 (never heard answer fast);
    # the first send of each run times out and the jobs after it are deferred, not sent
    # one timeout after the other while they hold the send pool's threads. Deferred: no
    # request, no attempt. A long lease: every turn comes before the cutoff.
    s = _settings(settings).with_overrides(lease_seconds=60.0)
    assert s.endpoint_concurrency == 8
    slow_url = receiver.always("/slow", rx.sleep(1.5))
    fine_url = receiver.always("/fine", rx.ok())
    partner = h.new_partner(settings, slow_url)
    to_slow = _batch_for(partner.partner_id, slow_url, 6)
    to_fine = _batch_for(partner.partner_id, fine_url, 5)
    endpoint = _endpoint_of(to_slow[0])
    if known_slow:
        _mark_slow(endpoint, s)
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
    s = _settings(settings).with_overrides(endpoint_concurrency=8)
    gate = slow_lane.EndpointGate(clock=Clock())
    monkeypatch.setattr(slow_lane, "GATE", gate)
    _mark_slow_on(gate, KEY_7, s)
    slow_answers = {"n1": 2.0}  # beyond slow_send_seconds (1 s); the others take 10 ms
    sent: list[str] = []

    def fake_perform(job, ticket, settings):
        gate.started(ticket)
        result = _result(slow_answers.get(job.notification_id, 0.01))
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
    s = _settings(settings)
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
def test_no_post_starts_beyond_the_cap_once_the_endpoint_shows_slow(settings):
    # Four tickets handed out (two batches) before anything showed the endpoint hangs;
    # two POSTs start and stay in flight past slow_send_seconds: the others may not.
    s = _settings(settings)
    clock = Clock()
    gate = slow_lane.EndpointGate(clock=clock)
    tickets = [gate.admit(7, s) for _ in range(4)]
    assert None not in tickets
    first, second, third, fourth = (t for t in tickets if t is not None)
    gate.started(first)
    assert gate.may_start(second, s)
    gate.started(second)
    assert gate.may_start(third, s)  # not slow yet: nothing in flight long
    clock.now += s.slow_send_seconds
    assert not gate.may_start(third, s) and not gate.may_start(fourth, s)
    gate.done(first, _result(s.slow_send_seconds, FailureKind.TIMEOUT), s)
    assert gate.may_start(third, s)  # one started in flight: room under the cap of 2
    for ticket in (second, third, fourth):
        gate.done(ticket, None, s)
    assert gate.in_flight(7) == 0


@pytest.mark.unit
def test_an_endpoint_is_trusted_while_it_answers_fast(settings):
    s = _settings(settings)
    clock = Clock()
    gate = slow_lane.EndpointGate(clock=clock)
    assert not gate.trusted(7, s)  # not heard from: it may be the one that hangs
    ticket = gate.admit(7, s)
    assert ticket is not None
    gate.done(ticket, _result(0.01), s)
    assert gate.trusted(7, s)
    clock.now += s.slow_window + 1
    assert not gate.trusted(7, s)  # not heard from lately
    ticket = gate.admit(7, s)
    assert ticket is not None
    gate.done(ticket, _result(0.01), s)
    _mark_slow_on(gate, 7, s)
    assert not gate.trusted(7, s)
    # Neither a send that never started nor a slow answer (by its own duration: the
    # gate's clock does not move here) earns trust.
    for result in (None, _result(s.slow_send_seconds + 1)):
        ticket = gate.admit(8, s)
        assert ticket is not None
        gate.done(ticket, result, s)
        assert not gate.trusted(8, s)


@pytest.mark.unit
@pytest.mark.parametrize("trusted, runs_expected", [(True, 6), (False, 2)])
def test_an_endpoint_not_trusted_gets_as_many_runs_as_a_slow_one(settings, monkeypatch,
                                                                 trusted, runs_expected):
    s = _settings(settings).with_overrides(endpoint_concurrency=8)
    gate = slow_lane.EndpointGate(clock=Clock())
    monkeypatch.setattr(slow_lane, "GATE", gate)
    if trusted:
        ticket = gate.admit(KEY_7, s)
        assert ticket is not None
        gate.done(ticket, _result(0.01), s)

    def fake_perform(job, ticket, settings):
        gate.started(ticket)
        gate.done(ticket, _result(0.01), settings)
        return _result(0.01)

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


def _mark_slow_on(gate: slow_lane.EndpointGate, key: object, settings: Settings) -> None:
    ticket = gate.admit(key, settings)
    assert ticket is not None
    gate.done(ticket, _result(0.5, FailureKind.TIMEOUT), settings)


def test_deferred_deliveries_are_sent_later_once_each(settings, worker, receiver,
                                                      override_settings, monkeypatch):
    # The endpoint is slow and every answer too (0.4 s, past slow_send_seconds, within
    # the timeout): of each batch the cap's sends go, the jobs waiting behind them are
    # deferred, swept again later, and in the end each is sent once.
    deferred: set[str] = set()
    defer = slow_lane.defer

    def recorded(session, ids, *args, **kwargs):
        deferred.update(ids)
        return defer(session, ids, *args, **kwargs)

    monkeypatch.setattr(slow_lane, "defer", recorded)
    url = receiver.always("/slow", rx.sleep(0.4))
    with override_settings(**{**SLOW, "slow_send_seconds": 0.3, "total_timeout": 1.5}) as s:
        partner = h.new_partner(s, url)
        first = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                      next_attempt_at=None)
        _mark_slow(_endpoint_of(first), s)
        published = publish_events(partner.partner_id, [
            {"type": "transaction.paid", "reference": f"TXN-{i}", "payload": {"n": i}}
            for i in range(6)])
        ids = {p.notification_id for p in published}
        h.wait_until(
            lambda: all(h.sent(n) for n in ids), timeout=30, interval=0.1,
            on_poll=sweep_due, message="every deferred delivery sent in the end")

    got = Counter(r.headers["webhook-id"] for r in receiver.requests("/slow"))
    assert set(got) == ids and set(got.values()) == {1}  # one POST each, none lost
    for nid in ids:
        [attempt] = h.attempts(nid)
        assert attempt.success
    assert deferred and deferred <= ids  # some waited behind a slow answer, and came back


def test_a_deferral_is_counted_once_its_transaction_commits(settings, monkeypatch):
    # A transaction run again after a deadlock defers again: the metric counts the
    # committed run only.
    counted: list[tuple[int, str]] = []
    monkeypatch.setattr(metrics, "observe_deferred",
                        lambda n, reason="slow_endpoint": counted.append((n, reason)))
    runs: list[int] = []

    def work(session):
        slow_lane.defer(session, [str(uuid.uuid4())], "token", settings)
        runs.append(len(runs))
        if len(runs) == 1:
            raise OperationalError("UPDATE notifications", {}, Exception("deadlock detected"))

    in_transaction(work, retry_for=5.0)
    assert runs == [0, 1] and counted == [(1, "slow_endpoint")]


def test_an_endpoint_slow_at_its_old_url_is_not_slow_at_its_new_one(settings, receiver):
    """Moved away from a URL that hung, an endpoint's deliveries to its new URL were
    deferred (15-30 s each) while the old URL's slow window and sends in flight lasted:
    slowness is the server's at a URL (a black-box try)."""
    s = _settings(settings)
    old, new = receiver.url("/hung"), receiver.always("/new", rx.ok())
    partner = h.new_partner(settings, old)
    nid = h.insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    slow = _endpoint_of(nid)
    _mark_slow(slow, s)
    hung = [slow_lane.GATE.admit(slow, s) for _ in range(s.slow_endpoint_concurrency)]
    assert all(hung) and slow_lane.GATE.admit(slow, s) is None  # at its cap
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner.partner_id, url=new)
    assert service.deliver(nid, s).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 1
