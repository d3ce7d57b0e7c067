"""The served OpenAPI document validates, and schemathesis run against it finds no 5xx."""

from __future__ import annotations

import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from deliverer.models import NotificationStatus
from tests.api.conftest import ADMIN_TOKEN
from tests.support import helpers as h

SPEC = "/api/openapi.json"
EXAMPLES_PER_OPERATION = 25
BUDGET_SECONDS = 50.0

PARTNER_OPERATIONS = {
    ("GET", "/api/partner/v2/webhook-notifications"),
    ("GET", "/api/partner/v2/webhook-notifications/{notification_id}"),
    ("POST", "/api/partner/v2/webhook-notifications/{notification_id}/retry"),
    ("POST", "/api/partner/v2/webhook-notifications/{notification_id}/ignore"),
    ("POST", "/api/partner/v2/transactions/{reference}/resend-webhook"),
    ("POST", "/api/partner/v2/webhook-notifications/{notification_id}/resend"),
    ("GET", "/api/partner/v2/webhook-settings"),
    ("PUT", "/api/partner/v2/webhook-settings"),
    ("POST", "/api/partner/v2/webhook-settings/rotate-secret"),
    ("GET", "/api/partner/v2/endpoints"),
    ("POST", "/api/partner/v2/endpoints"),
    ("GET", "/api/partner/v2/endpoints/{endpoint_id}"),
    ("PATCH", "/api/partner/v2/endpoints/{endpoint_id}"),
    ("DELETE", "/api/partner/v2/endpoints/{endpoint_id}"),
    ("POST", "/api/partner/v2/endpoints/{endpoint_id}/rotate-secret"),
    ("POST", "/api/partner/v2/endpoints/{endpoint_id}/test"),
    ("POST", "/api/partner/v2/endpoints/{endpoint_id}/recover"),
    ("GET", "/api/partner/v2/event-types"),
    ("POST", "/api/webhooks/deliveries/{delivery_id}/retry"),
    ("GET", "/api/webhooks/deliveries"),
    ("POST", "/api/v1/merchant/transactions/{transaction_id}/resend-webhook"),
    ("POST", "/invoices/resend-webhook/{invoice_id}"),
}


def test_openapi_document_validates(anonymous):
    response = anonymous.get(SPEC)
    assert response.status_code == 200, response.text
    spec = response.json()
    validate(spec)  # raises on any violation of the OpenAPI 3.0 specification
    assert spec["openapi"].startswith("3.0")
    operations = {(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item if method in ("get", "post", "put", "delete", "patch")}
    assert operations >= PARTNER_OPERATIONS
    assert ("POST", "/internal/v1/events") in operations


def test_openapi_documents_the_error_shape_and_fields(anonymous):
    spec = anonymous.get(SPEC).json()
    schemas = spec["components"]["schemas"]
    error = next(s for name, s in schemas.items() if name.startswith("ApiError"))
    assert set(error["properties"]) >= {"statusCode", "code", "message"}
    # Every error response the document declares is that shape: the default one (400s,
    # 401s) had flask-smorest's, with an integer code and no statusCode (an audit).
    assert "Error" not in schemas
    for name, response in spec["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ApiError"), name
    retry = spec["paths"]["/api/partner/v2/webhook-notifications/{notification_id}/retry"]
    assert {"200", "404", "409", "429"} <= set(retry["post"]["responses"])
    notification = next(s for name, s in schemas.items() if name == "Notification")
    assert {"manualRetryCount", "retryAttempts", "latestErrorPayload",
            "cycleStartedAt", "held"} <= set(notification["properties"])
    query = spec["paths"]["/api/partner/v2/webhook-notifications"]["get"]["parameters"]
    assert {p["name"] for p in query} >= {"status", "eventType", "reference", "createdFrom",
                                          "createdTo", "limit", "cursor", "endpointId",
                                          "sequenceAfter"}
    endpoint = schemas["Endpoint"]["properties"]
    assert {"id", "url", "description", "eventTypes", "enabled", "rateLimit", "status",
            "failingSince", "createdAt"} <= set(endpoint)
    assert "signingSecret" not in endpoint
    assert "signingSecret" in schemas["EndpointWithSecret"]["properties"]
    recover = spec["paths"]["/api/partner/v2/endpoints/{endpoint_id}/recover"]["post"]
    assert {"200", "404", "409", "429"} <= set(recover["responses"])
    # Bad arguments are answered 400 (api.errors), and documented so: webargs' 422 was
    # documented on every operation that takes any.
    documented = {code for item in spec["paths"].values() for operation in item.values()
                  if isinstance(operation, dict) for code in operation.get("responses", {})}
    assert "422" not in documented
    alerts = spec["paths"]["/api/partner/v2/webhook-alerts"]["get"]["responses"]
    assert "400" in alerts


@pytest.fixture
def fuzz_partner(make_partner, receiver, worker, api_settings):
    """A partner with some real data, a fast resend wait, and generous limits."""
    partner = make_partner(receiver.url("/hook"))
    url = receiver.url("/hook")
    for state in (NotificationStatus.FAILED, NotificationStatus.SENT,
                  NotificationStatus.PENDING, NotificationStatus.NOT_SENT):
        h.insert_notification(partner.partner_id, url, status=state, reference="TXN-1")
    with api_settings(resend_wait_seconds=0.05, manual_retry_rate_per_minute=1_000_000,
                      resend_rate_per_minute=1_000_000):
        yield partner


def fuzz(operation, mode, base_url, headers, session) -> int:
    """Up to EXAMPLES_PER_OPERATION generated requests; a 5xx fails with a curl to replay."""
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        # Fresh examples every run (derandomized runs never tried a NUL character);
        # a failure prints the request as a curl command and the seed to replay it.
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded runtime
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case):
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    try:
        exercise()
    except Unsatisfiable:
        # Negative mode has nothing to break in an operation without parameters or body.
        assert mode == GenerationMode.NEGATIVE, operation.label
    return calls


def test_schemathesis_finds_no_server_errors(live_server, fuzz_partner):
    schema = schemathesis.openapi.from_url(live_server.url + SPEC)
    headers = {"X-Api-Key": fuzz_partner.api_key, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    session = requests.Session()
    calls = 0
    deadline = time.monotonic() + BUDGET_SECONDS
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= len(PARTNER_OPERATIONS)
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if len(operation.query) or len(operation.body):
            # Path parameters are free-form strings: nothing negative to generate there.
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            if time.monotonic() < deadline:
                calls += fuzz(operation, mode, live_server.url, headers, session)
    assert calls >= len(operations) * 5, calls


def test_the_compatibility_routes_answer_as_the_document_says(live_server, make_partner,
                                                               receiver, worker):
    # Only the API's error body was documented for them: a client generated from the
    # document failed on every success (the merchant try).
    schema = schemathesis.openapi.from_url(live_server.url + SPEC)
    partner = make_partner(receiver.url("/hook"))
    failed = h.insert_notification(partner.partner_id, receiver.url("/hook"),
                                   status=NotificationStatus.FAILED, reference="123")
    answers = [
        ("GET", "/api/webhooks/deliveries", partner.api.get("/api/webhooks/deliveries")),
        ("POST", "/api/webhooks/deliveries/{delivery_id}/retry",
         partner.api.post(f"/api/webhooks/deliveries/{failed}/retry")),
        ("POST", "/api/v1/merchant/transactions/{transaction_id}/resend-webhook",
         partner.bearer.post("/api/v1/merchant/transactions/123/resend-webhook")),
        ("POST", "/api/v1/merchant/transactions/{transaction_id}/resend-webhook",
         partner.bearer.post("/api/v1/merchant/transactions/NOPE/resend-webhook")),
        ("POST", "/invoices/resend-webhook/{invoice_id}",
         partner.bearer.post("/invoices/resend-webhook/123")),
    ]
    assert [a.status_code for *_, a in answers] in (
        [200, 200, status, 404, 200] for status in (200, 202))
    assert answers[0][2].json()["data"], "the list is not empty"
    for method, path, answer in answers:
        schema[path][method].validate_response(answer)  # raises on a mismatch


def test_every_429_declares_its_retry_after_header(anonymous):
    """Every 429 the API answers sets Retry-After (``notifications/audit.py``): a client
    generated from the document should know to read it."""
    spec = anonymous.get(SPEC).json()
    found = 0
    for item in spec["paths"].values():
        for method, operation in item.items():
            response = operation.get("responses", {}).get("429") if method != "parameters" else None
            if response is not None:
                found += 1
                assert "Retry-After" in response.get("headers", {}), operation.get("operationId")
    assert found >= 5
