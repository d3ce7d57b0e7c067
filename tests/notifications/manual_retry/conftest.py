"""What each manual-retry batch hands to the broker, recorded instead of sent (autouse)."""

from __future__ import annotations

import pytest

from deliverer.notifications import manual_retry


@pytest.fixture(autouse=True)
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str]]:
    """What each committed batch hands to the broker: (ids, lane). Recorded instead of
    sent, so that a worker left running by other tests does not deliver (and change)
    the notifications these tests read back."""
    calls: list[tuple[list[str], str]] = []
    monkeypatch.setattr(manual_retry, "enqueue_batch",
                        lambda ids, lane, due_at=None: calls.append((list(ids), lane)))
    return calls
