"""Broker queue names. Separate lanes so a retry backlog never delays fresh or
merchant-requested deliveries; operators can give each its own workers."""

from __future__ import annotations

from deliverer.models import Lane

FIRST = "deliver.first"
RETRY = "deliver.retry"
MANUAL = "deliver.manual"
MAINTENANCE = "deliverer.maintenance"

BY_LANE = {Lane.FIRST: FIRST, Lane.RETRY: RETRY, Lane.MANUAL: MANUAL}
ALL = (FIRST, RETRY, MANUAL, MAINTENANCE)
