"""Hypothesis drives a notification through every operation in random orders against the
real database; after each step the row must be in a legal state, reached by a legal
transition. Time is simulated (every service call takes ``now``), so no step sleeps."""

from __future__ import annotations

from datetime import timedelta

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import func, select

from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.delivery.sending import sender
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.errors import Conflict
from deliverer.models import ApiKey, Attempt, Endpoint, Notification, NotificationStatus, utcnow
from deliverer.notifications import ignore as notifications
from deliverer.notifications import manual_retry as manual_retries
from deliverer.partners import webhook_settings
from deliverer.partners.service import Principal
from deliverer.scheduling.sweep import collect_due
from tests.support.helpers import insert_notification, new_partner

S = NotificationStatus
ALLOWED = {
    S.PENDING: {S.PENDING, S.SENT, S.FAILED, S.NOT_SENT},
    S.FAILED: {S.FAILED, S.PENDING, S.SENT, S.NOT_SENT},
    S.SENT: {S.SENT},
    S.NOT_SENT: {S.NOT_SENT},
}


class NotificationLifecycle(RuleBasedStateMachine):
    config = None  # the test's Settings, set before the run

    def __init__(self) -> None:
        super().__init__()
        settings = type(self).config
        assert settings is not None
        self.settings = settings
        self.now = utcnow()
        url = "http://127.0.0.1:9/never-dialled"  # results are simulated below
        partner = new_partner(settings, url)
        with session_scope() as session:
            key_id = session.scalar(select(ApiKey.id).where(
                ApiKey.partner_id == partner.partner_id))
        self.principal = Principal(partner.partner_id, key_id)
        self.nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                       next_attempt_at=self.now,
                                       cycle_started_at=self.now)
        self.previous = S.PENDING
        self.attempts = 0
        self.manual_retries = 0

    def row(self) -> Notification:
        with session_scope() as session:
            row = session.get(Notification, self.nid)
            assert row is not None
            session.expunge(row)
            return row

    @rule(success=st.booleans(), status=st.sampled_from([200, 204, 404, 500, 503, 410]))
    def attempt(self, success: bool, status: int) -> None:
        row = self.row()
        if row.next_attempt_at is not None and row.next_attempt_at > self.now:
            self.now = row.next_attempt_at
        with session_scope() as session:
            claim = service.claim(session, self.nid, self.settings, now=self.now)
        if claim.job is None:
            # Nothing due, or the endpoint was disabled by a 410 (then the row stops).
            assert claim.state == service.ClaimState.FINAL
            assert self.row().next_attempt_at is None
            return
        code = status if success else max(status, 404)
        ok = 200 <= code < 300
        result = sender.SendResult(
            started_at=self.now, duration_ms=3, success=ok, status_code=code,
            error=None if ok else error_payload(FailureKind.HTTP_STATUS, f"HTTP {code}", code))
        with session_scope() as session:
            service.record(session, claim.job, result, self.settings, now=self.now)
        self.attempts += 1

    def endpoint_disabled(self) -> bool:
        with session_scope() as session:
            return session.scalar(
                select(Endpoint.disabled_at.is_not(None))
                .join(Notification, Notification.endpoint_id == Endpoint.id)
                .where(Notification.id == self.nid)) is True

    @rule()
    def manual_retry(self) -> None:
        before = self.row()
        # A 410 disabled the endpoint: the retry would be held again, unsent.
        disabled = self.endpoint_disabled()
        try:
            with session_scope() as session:
                manual_retries.manual_retry(session, self.settings, self.principal, self.nid,
                                           now=self.now)
        except Conflict:
            assert before.status != S.FAILED or before.manual_retry_count >= 3 or disabled
            return
        assert before.status == S.FAILED and before.manual_retry_count < 3 and not disabled
        self.manual_retries += 1
        after = self.row()
        assert after.retry_attempts == 0 and after.latest_error_payload is None
        assert after.cycle_started_at == self.now and after.status == S.PENDING

    @rule()
    def save_settings(self) -> None:
        """The merchant saves its webhook settings: a disabled endpoint is enabled."""
        with session_scope() as session:
            webhook_settings.update_settings(session, self.settings, self.principal.partner_id)
        assert not self.endpoint_disabled()

    @rule()
    def ignore(self) -> None:
        before = self.row()
        try:
            with session_scope() as session:
                notifications.ignore(session, self.principal, self.nid, now=self.now)
        except Conflict:
            assert before.status == S.SENT
            return
        assert self.row().status == S.NOT_SENT

    @rule(seconds=st.floats(min_value=0, max_value=40 * 24 * 3600))
    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds * self.settings.time_scale)

    @rule()
    def sweep(self) -> None:
        with session_scope() as session:
            due = collect_due(session, self.settings, now=self.now, limit=100)
        horizon = self.now + timedelta(seconds=self.settings.sweep_horizon)
        for item in due:
            assert item.due_at <= horizon

    @invariant()
    def legal_state(self) -> None:
        row = self.row()
        assert row.status in ALLOWED[self.previous], (self.previous, row.status)
        self.previous = S(row.status)
        live = row.status in (S.PENDING, S.FAILED)
        if row.next_attempt_at is not None:
            assert live and not row.held
        if row.status == S.PENDING:
            assert row.next_attempt_at is not None
        if row.status == S.SENT:
            assert row.sent_at is not None
        if row.next_attempt_at is not None and row.status == S.FAILED:
            # Never scheduled past the 30-day cap of its cycle.
            cap = timedelta(seconds=self.settings.ladder.max_age * self.settings.time_scale)
            assert row.next_attempt_at <= row.cycle_started_at + cap
        assert 0 <= row.manual_retry_count <= 3 and row.manual_retry_count == self.manual_retries
        # Every failed attempt of the cycle is one of the attempts counted.
        assert 0 <= row.retry_attempts <= row.attempt_count and row.lease_token is None
        with session_scope() as session:
            recorded = session.scalar(select(func.count()).select_from(Attempt)
                                      .where(Attempt.notification_id == self.nid))
        assert recorded == self.attempts == row.attempt_count


@pytest.mark.slow
def test_notification_state_machine(settings, monkeypatch):
    # The machine plays the worker's part itself, with simulated results and time; a
    # manual retry's broker message must not also reach a real worker left running by
    # other tests.
    queued: list[str] = []
    monkeypatch.setattr(manual_retries, "enqueue_batch",
                        lambda nids, lane, due_at=None: queued.extend(nids))
    NotificationLifecycle.config = settings
    run_state_machine_as_test(
        NotificationLifecycle,
        settings=hsettings(max_examples=25, stateful_step_count=25, deadline=None,
                           suppress_health_check=list(HealthCheck)),
    )
