"""``/healthz`` (the process answers) and ``/readyz`` (database and broker reachable)."""

from __future__ import annotations

import deliverer.config
from tests.support.ports import closed_port


def test_healthz(make_app):
    response = make_app().test_client().get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_readyz_when_database_and_broker_answer(make_app):
    response = make_app().test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_when_the_broker_is_down(make_app):
    app = make_app(broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.json
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error: ")
    # Liveness does not depend on dependencies: restarting the process would not help.
    assert app.test_client().get("/healthz").status_code == 200


def test_readyz_when_the_database_is_unreachable(settings, make_app):
    bad = settings.with_overrides(database_url="sqlite:////proc/no-such-dir/deliverer.db")
    app = make_app()
    app.config["DELIVERER_SETTINGS"] = bad
    deliverer.config.set_settings(bad)  # the process-wide engine is what /readyz uses
    try:
        response = app.test_client().get("/readyz")
    finally:
        deliverer.config.set_settings(settings)
    assert response.status_code == 503
    assert response.json["checks"]["database"].startswith("error: ")
    assert response.json["checks"]["broker"] == "ok"
