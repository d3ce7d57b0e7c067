"""Routes in the shapes of the providers merchants come from (seeds 001, 002, 004).

Thin adapters over the same services as ``/api/partner/v2``.
"""

from __future__ import annotations

import re
from typing import Any

from flask import current_app

from api import presenters
from api.auth import check_partner, current_partner
from api.db import get_session
from api.resend import resend
from api.schemas.common import RETRY_AFTER
from api.schemas.compat import (
    DeliveryPageSchema,
    InvoiceResendSchema,
    RetryQueuedSchema,
    TransactionErrorSchema,
    TransactionResendSchema,
)
from api.schemas.partner import DeliveryQuerySchema
from api.views.smorest import Blueprint
from deliverer.errors import DelivererError, DeliveryFailed, NotFound
from deliverer.notifications import manual_retry, queries
from deliverer.notifications.resend import TransactionNotFound

blp = Blueprint("compat", __name__, url_prefix="",
                description="Compatibility routes for merchants migrating from other providers.")
blp.before_request(check_partner)


# -- seed 001 ---------------------------------------------------------------------------

@blp.route("/api/webhooks/deliveries/<delivery_id>/retry", methods=["POST"])
@blp.response(200, RetryQueuedSchema)
def retry_delivery(delivery_id: str) -> Any:
    """Seed 001: retry a failed delivery."""
    manual_retry.manual_retry(get_session(), current_app.config["DELIVERER_SETTINGS"],
                         current_partner(), delivery_id)
    return {"success": True, "deliveryId": delivery_id,
            "message": "Retry queued successfully."}


@blp.route("/api/webhooks/deliveries", methods=["GET"])
@blp.arguments(DeliveryQuerySchema, location="query")
@blp.response(200, DeliveryPageSchema)
def list_deliveries(query: dict[str, Any]) -> Any:
    """Seed 001: list deliveries, e.g. ``?status=FAILED``."""
    page = queries.list_notifications(get_session(), current_partner().partner_id,
                                      queries.ListFilters(**query))
    data = []
    for notification, event, _endpoint in page.items:
        body = presenters.notification(notification, event)
        data.append({
            "deliveryId": notification.id,
            "eventId": event.id,
            "eventType": event.type,
            "reference": event.reference,
            "status": notification.status,
            "attempts": notification.attempt_count,
            "lastError": notification.latest_error_payload,
            "createdAt": body["created_at"].isoformat(),
            "nextAttemptAt": (notification.next_attempt_at.isoformat()
                              if notification.next_attempt_at else None),
        })
    return {"data": data, "nextCursor": page.next_cursor}


# -- seed 002 ---------------------------------------------------------------------------

def _seed_002_errors(view: Any) -> Any:
    """Its error statuses documented in its shape (flask-smorest keeps the API's error
    body as the ``default`` response, whatever a route says)."""
    for status in (400, 401, 404, 409, 429, 502, 503):
        view = blp.alt_response(status, schema=TransactionErrorSchema,
                                headers=RETRY_AFTER if status == 429 else None)(view)
    return view


@blp.route("/api/v1/merchant/transactions/<transaction_id>/resend-webhook", methods=["POST"])
@blp.response(200, TransactionResendSchema)
@blp.alt_response(202, schema=TransactionResendSchema, success=True,
                  description="The POST has not ended within the resend wait")
@_seed_002_errors
def resend_transaction_webhook(transaction_id: str) -> Any:
    """Seed 002: its success and error bodies are ``{status, message, data}`` (errors
    shaped by ``api.errors``, under its prefix)."""
    outcome, body = resend(transaction_id)
    data = {"transaction_id": transaction_id, "webhook_url": body["webhook_url"]}
    if outcome == "success":
        return {"status": "success", "message": "Webhook sent successfully", "data": data}
    return {"status": "pending", "message": "Webhook resend in progress", "data": data}, 202


# -- seed 004 ---------------------------------------------------------------------------

# ASCII digits only: str.isdigit() also takes "²" or "٣", which int() refuses. At most
# 200 of them, the longest reference there is (and int() refuses more than 4300 digits).
_INVOICE_NUMBER = re.compile(r"[0-9]{1,200}")


class InvoiceNotFound(NotFound):
    message = "Invoice not found"  # seed 004


class InvoiceResendFailed(DeliveryFailed):
    """Seed 004 lists 500 for a resend that failed, not the 502 of our own route. The
    endpoint's answer is in the attempt's error payload (GET the notification)."""

    status_code = 500
    message = "Internal error while resending webhook"  # seed 004


def _instead(error: DelivererError, original: DelivererError) -> DelivererError:
    """Seed 004's error for ``original``, with its audit row (``Refusal``)."""
    error.refusal = original.refusal
    return error


@blp.route("/invoices/resend-webhook/<invoice_id>", methods=["POST"])
@blp.response(200, InvoiceResendSchema)
def resend_invoice_webhook(invoice_id: str) -> Any:
    """Seed 004: ``status`` is ``success`` or ``pending``."""
    # Decided before the resend is recorded and queued: nothing after it may fail.
    echoed: int | str = (int(invoice_id) if _INVOICE_NUMBER.fullmatch(invoice_id)
                         else invoice_id)
    try:
        outcome, _body = resend(invoice_id)
    except TransactionNotFound as exc:
        raise _instead(InvoiceNotFound(), exc) from exc
    except DeliveryFailed as exc:
        raise _instead(InvoiceResendFailed(), exc) from exc
    return {
        "message": ("Webhook reenviado com sucesso" if outcome == "success"
                    else "Reenvio do webhook em andamento"),
        "invoice_id": echoed,
        "status": outcome,
    }
