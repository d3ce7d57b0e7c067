"""One run at a time of a periodic maintenance job, and never skipped for good.

Beat triggers such a job far more often than it must run (the attempt purge: hourly, for
a daily job), and keeps no state of its own. Whether a run is due, and that only one runs
at once, is decided here, on the job's ``maintenance_runs`` row: a conditional UPDATE
that one caller wins, on SQLite as on PostgreSQL. A run that stops early (a worker
stopping, a run that hit its batch bound) releases its claim without completing, so the
next trigger carries on; a worker killed mid-run leaves a claim that runs out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from deliverer.models import MaintenanceRun


def _ensure_row(session: Session, name: str) -> None:
    insert = (postgresql.insert if session.bind is not None
              and session.bind.dialect.name == "postgresql" else sqlite.insert)
    session.execute(insert(MaintenanceRun).values(name=name)
                    .on_conflict_do_nothing(index_elements=["name"]))


def claim_if_due(session: Session, name: str, *, now: datetime, every: timedelta,
                 lease: timedelta) -> bool:
    """Claim job ``name`` for ``lease`` if it last completed ``every`` ago or more (or
    never) and nobody holds a live claim; whether this caller won it."""
    _ensure_row(session, name)
    result = session.execute(
        update(MaintenanceRun)
        .where(MaintenanceRun.name == name,
               or_(MaintenanceRun.claimed_until.is_(None),
                   MaintenanceRun.claimed_until < now),
               or_(MaintenanceRun.last_completed_at.is_(None),
                   MaintenanceRun.last_completed_at <= now - every))
        .values(claimed_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew(session: Session, name: str, *, now: datetime, lease: timedelta) -> None:
    session.execute(update(MaintenanceRun).where(MaintenanceRun.name == name)
                    .values(claimed_until=now + lease)
                    .execution_options(synchronize_session=False))


def finish(session: Session, name: str, *, now: datetime, completed: bool) -> None:
    """Give the claim up; ``completed``: the job is not due again for its period."""
    values: dict[str, object] = {"claimed_until": None}
    if completed:
        values["last_completed_at"] = now
    session.execute(update(MaintenanceRun).where(MaintenanceRun.name == name)
                    .values(**values).execution_options(synchronize_session=False))
