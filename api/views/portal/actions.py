"""What a merchant does in the portal: Retry, Send again and Ignore (seeds 000, 002 and
003, through the
same services and limits as the Partner API, recorded as the merchant's own requests
from the portal), and the alert e-mail address. Each answers with a redirect to the
page it came from, which shows the outcome."""

from __future__ import annotations

from typing import Any

from flask import current_app, redirect, request, url_for
from marshmallow import ValidationError

from api.db import get_session, roll_back_refused
from api.schemas.common import Email
from api.views.portal.blueprint import (
    bp,
    deliverer_settings,
    flash,
    not_found,
    partner_id,
    portal_session,
    principal,
    refused,
)
from api.views.portal.outcome import send_and_show, show_resend
from deliverer.errors import DelivererError
from deliverer.notifications.ignore import ignore as ignore_notification
from deliverer.notifications.manual_retry import manual_retry
from deliverer.notifications.queries import is_uuid
from deliverer.notifications.resend import request_notification_resend
from deliverer.partners import webhook_settings
from deliverer.portal.audit import PortalAction, record


def _back(notification_id: str) -> Any:
    return redirect(url_for("portal.notification", notification_id=notification_id))


@bp.post("/notifications/<notification_id>/retry")
def retry(notification_id: str) -> Any:
    if not is_uuid(notification_id):
        return not_found("notification")
    try:
        manual_retry(get_session(), deliverer_settings(), principal(), notification_id)
    except DelivererError as exc:
        roll_back_refused(exc)  # the refusal stays on the audit trail
        if exc.status_code == 404:
            return not_found("notification")
        flash("error", f"Retry refused: {refused(exc)}")
        return _back(notification_id)
    current_app.logger.info("portal retry of %s", notification_id,
                            extra={"notification_id": notification_id})
    send_and_show(notification_id, "Retry", "Delivered: your endpoint accepted the webhook.")
    return _back(notification_id)


@bp.post("/notifications/<notification_id>/resend")
def resend(notification_id: str) -> Any:
    """Send again: its event, to its endpoint's current URL, with its webhook-id (the
    Partner API's resend of one notification, its limit shared)."""
    try:
        sent = request_notification_resend(get_session(), deliverer_settings(), principal(),
                                           notification_id)
    except DelivererError as exc:
        roll_back_refused(exc)
        if exc.status_code == 404:
            return not_found("notification")
        flash("error", f"Send again refused: {refused(exc)}")
        return _back(notification_id)
    show_resend(sent.request_id)
    return _back(notification_id)


@bp.post("/notifications/<notification_id>/ignore")
def ignore(notification_id: str) -> Any:
    if request.form.get("confirm") != "yes":
        return redirect(url_for("portal.confirm_ignore", notification_id=notification_id))
    try:
        ignore_notification(get_session(), principal(), notification_id)
    except DelivererError as exc:
        roll_back_refused(exc)
        if exc.status_code == 404:
            return not_found("notification")
        flash("error", f"Ignore refused: {refused(exc)}")
    else:
        current_app.logger.info("portal ignore of %s", notification_id,
                                extra={"notification_id": notification_id})
        flash("ok", "Notification ignored: it is out of the retry queue for good "
                    "(NOT_SENT).")
    return _back(notification_id)


@bp.post("/alerts/email")
def alert_email() -> Any:
    """Subscribe an address to the alert e-mails, or unsubscribe (``unsubscribe``)."""
    address: str | None = None
    if "unsubscribe" not in request.form:
        try:
            address = Email().deserialize(request.form.get("email", "").strip())
        except ValidationError:
            flash("error", "That is not an e-mail address: nothing changed.")
            return redirect(url_for("portal.alerts"))
    webhook_settings.update_settings(get_session(), deliverer_settings(), partner_id(),
                                     alert_email=address)
    record(get_session(), portal_session(), PortalAction.ALERT_EMAIL, address)
    if address is None:
        flash("ok", "Alerts are no longer e-mailed.")
    elif deliverer_settings().smtp_url:
        flash("ok", f"Alerts will be e-mailed to {address}.")
    else:  # the page says this deployment sends no e-mail: the flash must not promise one
        flash("ok", f"Saved: alerts will be e-mailed to {address} once this deployment "
                    "sends e-mail; meanwhile they are listed here.")
    return redirect(url_for("portal.alerts"))


@bp.post("/webhooks/on")
def webhooks_on() -> Any:
    """Turn webhooks on again in the webhook settings (the API's PUT enabled: true)."""
    webhook_settings.update_settings(get_session(), deliverer_settings(), partner_id(),
                                     enabled=True)
    record(get_session(), portal_session(), PortalAction.WEBHOOKS_ON)
    flash("ok", "Webhooks are on: new events are sent, and what was held while they were "
                "off is sent again, in order.")
    return redirect(url_for("portal.index"))
