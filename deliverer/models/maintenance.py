from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base


class MaintenanceRun(Base):
    """When a periodic maintenance job last completed, and who runs it now.

    Beat keeps no state of its own (``beat_schedule.py``): it only triggers the job often,
    and this row decides whether a run is due and lets one run at a time.
    """

    __tablename__ = "maintenance_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # While a worker runs the job: until when no other may. Renewed as the run goes on;
    # past it the worker is taken for dead and the next trigger runs the job again.
    claimed_until: Mapped[datetime | None]
    last_completed_at: Mapped[datetime | None]
