"""Binding Celery to the Flask app, once (the Flask docs' ``celery_init_app``)."""

from __future__ import annotations

from celery import Celery
from flask import Flask

from deliverer.celery_app import make_celery
from deliverer.config import Settings


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    celery_app = make_celery(settings)
    # shared_task resolves to the current app: make this one current for the web process.
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
