"""What the alert e-mail tests share: an alert waiting to be mailed (its partner, address
and endpoint), a second alert on its endpoint, and what the alert's row says of its mail."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from deliverer.alerts import service as alerts
from deliverer.db import session_scope
from deliverer.models import Alert, Endpoint, NotificationStatus, utcnow
from deliverer.partners import webhook_settings
from tests.support.helpers import insert_notification, new_partner


def any_alert_emailed() -> bool:
    with session_scope() as session:
        alert = session.scalar(select(Alert))
        return alert is not None and alert.emailed_at is not None


def unmailed_alert(settings, alert_email: str | None = "ops@merchant.test",
                   created_at: datetime | None = None, name: str = "Acme") -> int:
    """A partner (with this alert address) and an alert on its endpoint; no message sent,
    as if the broker had been down when the alert was committed."""
    url = "http://127.0.0.1:9/hook"
    partner = new_partner(settings, url, name=name)
    if alert_email:
        with session_scope() as session:
            webhook_settings.update_settings(session, settings, partner.partner_id,
                                             alert_email=alert_email)
    insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                        next_attempt_at=None)
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.partner_id == partner.partner_id))
        assert endpoint is not None
        created_at = created_at or utcnow()
        # Still failing since before it: only a current alert is e-mailed.
        endpoint.failing_since = created_at - timedelta(minutes=1)
        alert = Alert(partner_id=partner.partner_id, endpoint_id=endpoint.id,
                      kind=alerts.KIND_FAILING, message="failing", created_at=created_at)
        session.add(alert)
        session.flush()
        return alert.id


def alert_emailed_at(alert_id: int) -> datetime | None:
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert.emailed_at


def email_claimed_until(alert_id: int) -> datetime | None:
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert.email_claimed_until


def minutes_ago(minutes: float) -> datetime:
    return utcnow() - timedelta(minutes=minutes)


def endpoint_of(alert_id: int) -> Any:
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert.endpoint_id


def another_alert(alert_id: int, kind: str, created_at: datetime) -> int:
    """One more alert of ``kind`` on the endpoint of ``alert_id``."""
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        another = Alert(partner_id=alert.partner_id, endpoint_id=alert.endpoint_id,
                        kind=kind, message=kind, created_at=created_at)
        session.add(another)
        session.flush()
        return another.id
