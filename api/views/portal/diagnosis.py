"""Diagnose: run the delivery path to an endpoint step by step (``deliverer.portal.
diagnose``) and show the outcome. A POST, as it sends a test webhook."""

from __future__ import annotations

from typing import Any

from api.db import commit_then, get_session
from api.views.portal.blueprint import (
    bp,
    deliverer_settings,
    not_found,
    page,
    partner_id,
    portal_session,
)
from deliverer.models import utcnow
from deliverer.portal import queries
from deliverer.portal.audit import PortalAction, record
from deliverer.portal.diagnose import diagnose as run_diagnosis


@bp.post("/endpoints/<ref>/diagnose")
def diagnose(ref: str) -> Any:
    session = get_session()
    endpoint = queries.get_endpoint(session, partner_id(), ref)
    if endpoint is None:
        return not_found("endpoint")
    secrets = queries.secrets_of(session, endpoint, utcnow())
    record(session, portal_session(), PortalAction.DIAGNOSE, ref)
    settings = deliverer_settings()
    # The network steps take seconds: no transaction is held open meanwhile.
    result = commit_then(lambda: run_diagnosis(endpoint.url, secrets, settings))
    return page("portal/diagnosis.html", e=endpoint, d=result)
