"""The HTTP API: ``create_app()`` is the application factory (gunicorn "api:create_app()")."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from flask_smorest import Api
from werkzeug.middleware.proxy_fix import ProxyFix

from api import db, guards
from api.errors import register_error_handlers
from api.extensions import celery_init_app
from api.schemas.common import ApiErrorSchema
from deliverer.batching import Coalescer
from deliverer.config import Settings, get_settings, set_settings
from deliverer.logging import configure_logging
from deliverer.notifications import manual_retry


class _Api(Api):
    # Errors are rendered by api.errors for the whole app, in the merchants' format, and
    # the OpenAPI document says so: its default error schema had an integer code and no
    # statusCode, and a client generated from it failed on every 400 and 401 (an audit).
    ERROR_SCHEMA = ApiErrorSchema

    def _register_error_handlers(self) -> None:
        pass


def create_app(settings: Settings | None = None, **config: Any) -> Flask:
    if settings is not None:
        set_settings(settings)
    settings = get_settings()
    app = Flask(__name__)
    app.config.update(
        DELIVERER_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        API_TITLE="deliverer",
        API_VERSION="v2",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "security": [{"ApiKey": []}, {"BearerKey": []}],
            "components": {"securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "BearerKey": {"type": "http", "scheme": "bearer",
                              "description": "The partner API key, or the admin token "
                                             "for /internal/v1"},
            }},
        },
    )
    app.config.update(config)
    if settings.trusted_proxies:
        # Behind a proxy every request came from it: one client's failed portal links
        # locked every merchant out, and cookies lost Secure (the security try).
        # Not the host: a proxy that does not set X-Forwarded-Host would pass on the
        # client's, and portal links are built on it (DELIVERER_PORTAL_URL says it).
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    configure_logging(logging.INFO)  # notification ids on every line (deliverer.logging)

    db.init_app(app)
    register_error_handlers(app)
    guards.init_app(app)  # 413 on every route, no NUL characters
    celery_init_app(app, settings)

    # Concurrent manual retries share a transaction (deliverer.batching).
    # The settings are read per batch, as views read them per request.
    app.extensions["deliverer_retries"] = Coalescer(
        "retries", lambda requests: manual_retry.run_batch(app.config["DELIVERER_SETTINGS"],
                                                           requests))

    api = _Api(app)
    from api.views import compat, endpoints, health, internal, partner

    app.register_blueprint(health.bp)
    from api.views import console, metrics, portal  # consoles, /metrics (issue 4)

    app.register_blueprint(console.bp)
    app.register_blueprint(portal.bp)  # the merchant portal (issue 20)
    app.register_blueprint(metrics.bp)
    api.register_blueprint(internal.blp)
    api.register_blueprint(partner.blp)
    api.register_blueprint(endpoints.blp)
    api.register_blueprint(compat.blp)
    app.extensions["deliverer_api"] = api
    return app
