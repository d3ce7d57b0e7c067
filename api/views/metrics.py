"""``/metrics`` for Prometheus (see ``deliverer.operations.scrape``).

Counts and queue depths only, no partner data; still, expose it to the scraper's network,
not to the internet (an ingress rule), like any Prometheus endpoint.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from deliverer.operations import scrape

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = scrape.render(current_app.config["DELIVERER_SETTINGS"],
                                       current_app.extensions.get("celery"))
    return Response(body, status=200, headers={"Content-Type": content_type,
                                               "Cache-Control": "no-store"})
