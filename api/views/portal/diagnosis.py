"""Diagnose: run the delivery path to an endpoint step by step (``deliverer.portal.
diagnose``) and show the outcome. A POST, as it sends a test webhook."""

from __future__ import annotations

from typing import Any

from flask import redirect, url_for

from api.db import commit_then, get_session, roll_back_refused
from api.views.portal.blueprint import (
    bp,
    deliverer_settings,
    flash,
    not_found,
    page,
    partner_id,
    portal_session,
    refused,
)
from deliverer.errors import TooManyRequests
from deliverer.models import utcnow
from deliverer.portal import queries
from deliverer.portal.audit import PortalAction, record_limited
from deliverer.portal.diagnose import diagnose as run_diagnosis


@bp.post("/endpoints/<ref>/diagnose")
def diagnose(ref: str) -> Any:
    session = get_session()
    endpoint = queries.get_endpoint(session, partner_id(), ref)
    if endpoint is None:
        return not_found("endpoint")
    settings = deliverer_settings()
    # Each run sends a signed POST to the endpoint: limited as test events are.
    try:
        record_limited(session, portal_session(), PortalAction.DIAGNOSE, ref,
                       settings.endpoint_test_rate_per_minute)
    except TooManyRequests as exc:
        roll_back_refused(exc)
        flash("error", f"Diagnosis not run: {refused(exc)}")
        return redirect(url_for("portal.endpoint_settings", ref=ref))
    secrets = queries.secrets_of(session, endpoint, utcnow())
    # The network steps take seconds: no transaction is held open meanwhile.
    result = commit_then(lambda: run_diagnosis(endpoint.url, secrets, settings))
    return page("portal/diagnosis.html", e=endpoint, d=result)
