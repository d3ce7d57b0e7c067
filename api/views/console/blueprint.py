"""The console's blueprint, and what every part of it uses: the settings, a page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template

from deliverer.config import Settings

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="../../templates")


def deliverer_settings() -> Settings:
    settings: Settings = current_app.config["DELIVERER_SETTINGS"]
    return settings


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status
