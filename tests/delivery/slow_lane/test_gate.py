"""What makes an endpoint slow (the gate alone, on a fake clock): sends in flight too long
do, a timeout does for the window only; sends waiting their turn and fast failures do
not; no POST starts beyond the cap once it shows slow, and it is trusted while it answers
fast."""

from __future__ import annotations

import pytest

from deliverer.delivery.sending import slow_lane
from deliverer.delivery.troubleshooting import FailureKind
from tests.delivery.slow_lane.helpers import Clock, mark_slow_on, send_result, slow_settings


@pytest.mark.unit
def test_a_healthy_endpoint_is_never_refused(settings):
    gate, s = slow_lane.EndpointGate(Clock()), slow_settings(settings)
    tickets = [gate.admit(7, s) for _ in range(50)]
    assert all(t is not None for t in tickets)


@pytest.mark.unit
def test_sends_in_flight_too_long_make_the_endpoint_slow(settings):
    clock = Clock()
    gate, s = slow_lane.EndpointGate(clock), slow_settings(settings)
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
        gate.done(ticket, send_result(1.0, FailureKind.TIMEOUT), s)
    # One still in flight: below the cap, one more may go.
    assert gate.admit(7, s) is not None
    assert gate.admit(7, s) is None


@pytest.mark.unit
def test_sends_waiting_their_turn_are_not_timed(settings):
    """A batch's jobs queue behind the endpoint's earlier POSTs: the queue is not slowness."""
    clock = Clock()
    gate, s = slow_lane.EndpointGate(clock), slow_settings(settings)
    waiting = [gate.admit(7, s) for _ in range(3)]
    clock.now += 5.0
    assert not gate.is_slow(7, s)
    assert waiting[0] is not None and waiting[1] is not None
    gate.started(waiting[0])
    clock.now += 0.5
    gate.started(waiting[1])  # the later start does not hide the earlier one
    clock.now += 0.5
    assert gate.is_slow(7, s)  # the first POST has run for slow_send_seconds
    gate.done(waiting[0], send_result(0.9), s)
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
    gate, s = slow_lane.EndpointGate(clock), slow_settings(settings)
    ticket = gate.admit("http://x/hook", s)
    assert ticket is not None
    gate.done(ticket, send_result(0.5, FailureKind.TIMEOUT), s)
    assert gate.is_slow("http://x/hook", s)
    held = [gate.admit("http://x/hook", s) for _ in range(3)]
    assert [t is not None for t in held] == [True, True, False]
    for t in held[:2]:
        assert t is not None
        gate.done(t, send_result(0.01), s)  # fast successes do not end the window early
    clock.now += 59.0
    assert gate.is_slow("http://x/hook", s)
    clock.now += 1.0
    assert not gate.is_slow("http://x/hook", s)
    assert all(gate.admit("http://x/hook", s) is not None for _ in range(5))


@pytest.mark.unit
def test_fast_failures_do_not_make_an_endpoint_slow(settings):
    gate, s = slow_lane.EndpointGate(Clock()), slow_settings(settings)
    for _ in range(10):
        ticket = gate.admit(7, s)
        assert ticket is not None
        gate.done(ticket, send_result(0.01, FailureKind.HTTP_STATUS), s)
    assert not gate.is_slow(7, s)


@pytest.mark.unit
def test_no_post_starts_beyond_the_cap_once_the_endpoint_shows_slow(settings):
    # Four tickets handed out (two batches) before anything showed the endpoint hangs;
    # two POSTs start and stay in flight past slow_send_seconds: the others may not.
    s = slow_settings(settings)
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
    gate.done(first, send_result(s.slow_send_seconds, FailureKind.TIMEOUT), s)
    assert gate.may_start(third, s)  # one started in flight: room under the cap of 2
    for ticket in (second, third, fourth):
        gate.done(ticket, None, s)
    assert gate.in_flight(7) == 0


@pytest.mark.unit
def test_an_endpoint_is_trusted_while_it_answers_fast(settings):
    s = slow_settings(settings)
    clock = Clock()
    gate = slow_lane.EndpointGate(clock=clock)
    assert not gate.trusted(7, s)  # not heard from: it may be the one that hangs
    ticket = gate.admit(7, s)
    assert ticket is not None
    gate.done(ticket, send_result(0.01), s)
    assert gate.trusted(7, s)
    clock.now += s.slow_window + 1
    assert not gate.trusted(7, s)  # not heard from lately
    ticket = gate.admit(7, s)
    assert ticket is not None
    gate.done(ticket, send_result(0.01), s)
    mark_slow_on(gate, 7, s)
    assert not gate.trusted(7, s)
    # Neither a send that never started nor a slow answer (by its own duration: the
    # gate's clock does not move here) earns trust.
    for result in (None, send_result(s.slow_send_seconds + 1)):
        ticket = gate.admit(8, s)
        assert ticket is not None
        gate.done(ticket, result, s)
        assert not gate.trusted(8, s)
