"""A lease voided by a fresh cycle (``notifications.cycle.fresh_cycle_values``: its token
cleared, its time kept, so that the POST still out keeps the row): whose it is, and its
release by that holder once the POST is recorded or handed back unsent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, bindparam, or_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from deliverer.delivery.claim import DeliveryJob
from deliverer.models import Notification, table_of

_NOTIFICATIONS = table_of(Notification)
_N = _NOTIFICATIONS.c


def ours(token: str, expires: datetime | None) -> ColumnElement[bool]:
    """SQL: the row is held by the lease ``token`` (until ``expires``), or was and a fresh
    cycle voided it (``cycle.fresh_cycle_values``: its token cleared, its time kept): the
    holder gives either back."""
    if expires is None:  # a job without a lease time (a resend's): its token alone
        return _N.lease_token == token
    return or_(_N.lease_token == token,
               and_(_N.lease_token.is_(None), _N.lease_expires_at == expires))


# A voided lease is freed by its holder once its POST is recorded: nobody else's, as a
# lease taken since has a token. The row's message was spent on the lease: the sweep
# sends the fresh cycle's attempt.
_RELEASE_VOIDED = (
    update(_NOTIFICATIONS)
    .where(_N.id == bindparam("nid"), _N.lease_token.is_(None),
           _N.lease_expires_at == bindparam("expires"))
    .values(lease_expires_at=None, scheduled_for=None)
)


def release_voided(session: Session, jobs: Sequence[DeliveryJob]) -> None:
    """Free the voided leases of ``jobs`` (recorded, their leases lost), if any. Commits
    nothing."""
    held = [{"nid": job.notification_id, "expires": job.lease_expires_at} for job in jobs
            if job.lease_expires_at is not None]
    if held:
        session.connection().execute(_RELEASE_VOIDED, held)
