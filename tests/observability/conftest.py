"""Fixtures of the observability tests: the web app, in-process (Flask's test client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from flask import Flask

import api
import deliverer.config
from deliverer.config import Settings


@pytest.fixture
def make_app(settings: Settings, celery_app: Celery) -> Iterator[Callable[..., Flask]]:
    """``make_app(**overrides)``: ``api.create_app`` with the session's settings changed.

    create_app installs its settings (and its Celery app) process-wide; they are put back
    after each call, and again after the test.
    """

    def make(**overrides: Any) -> Flask:
        app = api.create_app(settings.with_overrides(**overrides))
        restore()
        return app

    def restore() -> None:
        deliverer.config.set_settings(settings)
        celery_app.set_current()
        celery_app.set_default()

    yield make
    restore()
