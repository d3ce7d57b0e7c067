"""Giving a delivery lease back unsent, written once: a job claimed but not POSTed (handed
back by its batch, deferred by the slow lane, waiting for its endpoint's rate limit)
frees its row at once, due when given, and handed over to the broker or left to the
sweep (``outbox``). No attempt was made, so nothing else of the row changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def given_back(due: Any, marks: Mapping[str, Any]) -> dict[str, Any]:
    """The row's values (values, columns or binds): its lease freed, its next attempt at
    ``due`` (None: as it was), ``marks`` from ``outbox``."""
    values = {"lease_token": None, "lease_expires_at": None, **marks}
    if due is not None:
        values["next_attempt_at"] = due
    return values
