"""What the manual-retry tests share: a URL never dialled, and deciding a batch."""

from __future__ import annotations

from collections.abc import Sequence

from deliverer.config import Settings
from deliverer.db import session_scope
from deliverer.errors import DelivererError
from deliverer.notifications.manual_retry import Retried, RetryRequest, manual_retries

URL = "http://127.0.0.1:9/never-dialled"


def decide(settings: Settings, requests: Sequence[RetryRequest]
           ) -> list[Retried | DelivererError]:
    with session_scope() as session:
        return manual_retries(session, settings, requests)
