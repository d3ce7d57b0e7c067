"""The retry ladder: 2m, 5m, 10m, 15m, 30m, 1h, 2h, 4h, 8h, then every 8h, for 30 days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deliverer.retry_ladder import DAY, DEFAULT_LADDER, HOUR, MINUTE, Ladder

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EXPECTED_STEPS = [2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
                  1 * HOUR, 2 * HOUR, 4 * HOUR, 8 * HOUR]


def test_default_ladder_values():
    assert [DEFAULT_LADDER.delay(n) for n in range(1, 10)] == EXPECTED_STEPS
    assert EXPECTED_STEPS == [120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800]
    # After the ninth failure: every 8 hours, however many failures.
    for n in (10, 11, 50, 500):
        assert DEFAULT_LADDER.delay(n) == 8 * HOUR
    assert DEFAULT_LADDER.max_age == 30 * DAY


def test_failures_count_from_one():
    with pytest.raises(ValueError):
        DEFAULT_LADDER.delay(0)


def test_next_attempt_is_failure_time_plus_delay():
    failed_at = T0 + timedelta(minutes=7)
    due = DEFAULT_LADDER.next_attempt_at(cycle_started_at=T0, failed_at=failed_at, failures=3)
    assert due == failed_at + timedelta(minutes=10)


def test_time_scale_shrinks_delays_and_cap():
    failed_at = T0 + timedelta(seconds=1)
    due = DEFAULT_LADDER.next_attempt_at(cycle_started_at=T0, failed_at=failed_at, failures=1,
                                         time_scale=0.001)
    assert due == failed_at + timedelta(milliseconds=120)
    # 30 days * 0.001 = 43.2 minutes: beyond it, the cycle is over.
    late = T0 + timedelta(minutes=43)
    assert DEFAULT_LADDER.next_attempt_at(cycle_started_at=T0, failed_at=late, failures=20,
                                          time_scale=0.001) is None


def test_thirty_day_cap():
    deadline = T0 + timedelta(days=30)
    # Due exactly at the deadline is still allowed ...
    at_edge = deadline - timedelta(hours=8)
    assert DEFAULT_LADDER.next_attempt_at(cycle_started_at=T0, failed_at=at_edge,
                                          failures=12) == deadline
    # ... one second later is not.
    past = at_edge + timedelta(seconds=1)
    assert DEFAULT_LADDER.next_attempt_at(cycle_started_at=T0, failed_at=past,
                                          failures=12) is None


def test_full_schedule_of_an_always_failing_endpoint():
    """Simulate a whole cycle: the ladder, then every 8h, and nothing after 30 days."""
    failed_at = T0
    failures = 0
    delays = []
    while True:
        failures += 1
        due = DEFAULT_LADDER.next_attempt_at(cycle_started_at=T0, failed_at=failed_at,
                                             failures=failures)
        if due is None:
            break
        delays.append((due - failed_at).total_seconds())
        failed_at = due
    assert delays[:9] == EXPECTED_STEPS
    assert set(delays[9:]) == {8 * HOUR}
    ladder_total = sum(EXPECTED_STEPS)  # 15h 02m
    expected_repeats = int((30 * DAY - ladder_total) // (8 * HOUR))
    assert len(delays) == 9 + expected_repeats
    # The last attempt is within 30 days and the one after would not be.
    assert failed_at <= T0 + timedelta(days=30)
    assert failed_at + timedelta(hours=8) > T0 + timedelta(days=30)


def test_parse():
    ladder = Ladder.parse("120, 300,600;repeat=28800;max_age=2592000")
    assert ladder.steps == (120.0, 300.0, 600.0)
    assert ladder.repeat == 28800.0
    assert ladder.max_age == 2592000.0
    # repeat defaults to the last step, max_age to 30 days
    short = Ladder.parse("1,2,3")
    assert short.repeat == 3.0
    assert short.max_age == 30 * DAY


@pytest.mark.parametrize("kwargs", [
    {"steps": (), "repeat": 1, "max_age": 10},
    {"steps": (1, 0), "repeat": 1, "max_age": 10},
    {"steps": (1,), "repeat": -1, "max_age": 10},
    {"steps": (1,), "repeat": 1, "max_age": 0},
])
def test_invalid_ladders_are_rejected(kwargs):
    with pytest.raises(ValueError):
        Ladder(**kwargs)
