"""Which Celery app is current while a test runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery, _state


@contextmanager
def current_celery_app(app: Celery) -> Iterator[Celery]:
    """Make ``app`` the current and default app (``shared_task`` resolves through it)."""
    saved_current = getattr(_state._tls, "current_app", None)
    saved_default = _state.default_app
    app.set_current()
    app.set_default()
    try:
        yield app
    finally:
        _state._tls.current_app = saved_current
        _state.set_default_app(saved_default)
