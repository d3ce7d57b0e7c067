"""The benchmark smoke runs in a database and a Redis index of its own (bench/env.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_state() -> None:
    """Overrides tests/conftest.py's per-test clean-up: nothing of the test session's
    database or broker is used here, so there is nothing to empty."""
