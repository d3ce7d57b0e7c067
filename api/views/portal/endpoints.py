"""Endpoint settings in the portal: add, edit, disable or enable, delete, rotate the
secret (shown once), send a test event. Thin: ``deliverer.partners.registered`` (issue
19's service) does the work, with the same rules as ``/api/partner/v2/endpoints``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app, redirect, request, url_for
from marshmallow import ValidationError

from api.db import get_session, roll_back_refused
from api.schemas.portal import EndpointFormSchema, RecoverFormSchema, RotateFormSchema
from api.views.portal.blueprint import (
    bp,
    deliverer_settings,
    flash,
    not_found,
    page,
    partner_id,
    portal_session,
    principal,
    refused,
)
from api.views.portal.outcome import send_and_show
from deliverer.errors import DelivererError
from deliverer.models import Endpoint
from deliverer.notifications.recover import recover
from deliverer.partners import catalog, registered
from deliverer.portal import queries
from deliverer.portal.audit import PortalAction, record
from deliverer.publishing.endpoint_check import send_test_event

ALL = "*"


def _form_values(endpoint: Endpoint | None = None, saved: bool = False) -> dict[str, Any]:
    """What the form shows: what was just sent, else (or ``saved``: the page was stale)
    the endpoint's settings."""
    if request.method == "POST" and not saved:
        form = request.form
        return {"url": form.get("url", ""), "description": form.get("description", ""),
                "event_types": form.getlist("event_types"),
                "rate_limit": form.get("rate_limit", ""), "enabled": "enabled" in form}
    if endpoint is None:
        # Nothing ticked: "All events" ticked in advance took every event for an endpoint
        # whose merchant ticked one type (a black-box try).
        return {"url": "", "description": "", "event_types": [], "rate_limit": "",
                "enabled": True}
    return {"url": endpoint.url, "description": endpoint.description or "",
            "event_types": endpoint.subscriptions,
            "rate_limit": "" if endpoint.rate_limit is None else f"{endpoint.rate_limit:g}",
            "enabled": endpoint.disabled_at is None}


def _form(endpoint: Endpoint | None,
          error: ValidationError | DelivererError | None = None) -> tuple[str, int]:
    status = 200 if error is None else getattr(error, "status_code", 400)
    # A stale page's values would undo the change made since: the form shows that one.
    saved = isinstance(error, registered.StalePage)
    return page("portal/endpoint_form.html", status, e=endpoint,
                error=_problem(error) if error else None,
                values=_form_values(endpoint, saved),
                catalog=catalog.event_types(deliverer_settings()))


ALL_AND_SOME = ("Untick All events to receive only the types you ticked, or untick those "
                "types to receive every event.")


def _parsed() -> dict[str, Any]:
    """The form, validated (ValidationError); no type ticked is refused by the service.
    All events beside some types is refused: which of the two was meant?"""
    form = request.form
    types = form.getlist("event_types")
    if ALL in types and len(set(types)) > 1:
        raise ValidationError(ALL_AND_SOME, "event_types")
    data = EndpointFormSchema().load({
        "url": form.get("url", "").strip(),
        "description": form.get("description", "").strip() or None,
        "event_types": types,
        "rate_limit": form.get("rate_limit", "").strip() or None,
        "enabled": "enabled" in form})
    return data


# The forms' fields by their labels (a black-box try read "url: Not a valid URL." beside
# a field labelled URL, and "since" beside From).
_LABELS = {"url": "URL", "description": "Description", "rate_limit": "Rate limit",
           "event_types": "Event types", "since": "From", "until": "To",
           "overlap_seconds": "Overlap"}


def _problem(exc: ValidationError | DelivererError) -> str:
    if isinstance(exc, DelivererError):
        return exc.message
    messages = exc.normalized_messages()
    return "; ".join(f"{_LABELS.get(name, name.replace('_', ' '))}: {' '.join(map(str, text))}"
                     for name, text in messages.items())


def _secret_page(endpoint: Endpoint, secret: str, created: bool) -> tuple[str, int]:
    return page("portal/secret.html", e=endpoint, secret=secret, created=created)


@bp.route("/endpoints/new", methods=["GET", "POST"])
def new_endpoint() -> Any:
    if request.method == "GET":
        return _form(None)
    try:
        data = _parsed()
        endpoint = registered.create(get_session(), deliverer_settings(), partner_id(),
                                     **data)
    except (ValidationError, DelivererError) as exc:
        return _form(None, exc)
    record(get_session(), portal_session(), PortalAction.ADD_ENDPOINT, endpoint.public_id)
    current_app.logger.info("portal: endpoint %s added for partner %s", endpoint.public_id,
                            partner_id())
    assert endpoint.signing_secret is not None
    return _secret_page(endpoint, endpoint.signing_secret, created=True)


def _endpoint(ref: str) -> Endpoint | None:
    return queries.get_endpoint(get_session(), partner_id(), ref)


@bp.route("/endpoints/<ref>/settings", methods=["GET", "POST"])
def endpoint_settings(ref: str) -> Any:
    endpoint = _endpoint(ref)
    if endpoint is None:
        return not_found("endpoint")
    if request.method == "GET":
        return _form(endpoint)
    try:
        data = _parsed()
        data.pop("enabled")  # the Disable / Enable buttons' business
        registered.update_endpoint(get_session(), deliverer_settings(), endpoint,
                                   expect_url=request.form.get("shown_url") or None,
                                   expect_tag=request.form.get("shown_tag") or None, **data)
        record(get_session(), portal_session(), PortalAction.EDIT_ENDPOINT, ref)
    except (ValidationError, DelivererError) as exc:
        roll_back_refused(exc)
        return _form(_endpoint(ref), exc)
    flash("ok", "Settings saved.")
    return redirect(url_for("portal.endpoint_settings", ref=ref))


@bp.post("/endpoints/<ref>/enabled")
def set_enabled(ref: str) -> Any:
    endpoint = _endpoint(ref)
    if endpoint is None:
        return not_found("endpoint")
    choice = request.form.get("enabled")
    if choice not in ("yes", "no"):
        return page("portal/error.html", 400, title="Nothing changed",
                    message="Enable or disable: the form sent neither.")
    enabled = choice == "yes"
    registered.update_endpoint(get_session(), deliverer_settings(), endpoint, enabled=enabled)
    record(get_session(), portal_session(),
           PortalAction.ENABLE_ENDPOINT if enabled else PortalAction.DISABLE_ENDPOINT, ref)
    flash("ok", "Endpoint enabled: what it held is sent again, in order." if enabled
          else "Endpoint disabled: it receives nothing until you enable it again.")
    return redirect(url_for("portal.endpoint_settings", ref=ref))


@bp.route("/endpoints/<ref>/delete", methods=["GET", "POST"])
def delete_endpoint(ref: str) -> Any:
    endpoint = _endpoint(ref)
    if endpoint is None:
        return not_found("endpoint")
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return page("portal/confirm_delete.html", e=endpoint)
    try:
        stopped = registered.delete(get_session(), endpoint,
                                    expect_url=request.form.get("shown_url") or None)
    except DelivererError as exc:
        roll_back_refused(exc)
        flash("error", f"Not deleted: {_problem(exc)}")
        return redirect(url_for("portal.endpoint_settings", ref=ref))
    record(get_session(), portal_session(), PortalAction.DELETE_ENDPOINT, ref)
    current_app.logger.info("portal: endpoint %s deleted for partner %s", ref, partner_id())
    flash("ok", f"Endpoint {endpoint.url} deleted; {stopped} webhook(s) it still held will "
                "not be sent (NOT_SENT).")
    return redirect(url_for("portal.index"))


@bp.post("/endpoints/<ref>/rotate-secret")
def rotate_secret(ref: str) -> Any:
    endpoint = _endpoint(ref)
    if endpoint is None:
        return not_found("endpoint")
    try:
        overlap = RotateFormSchema().load(
            {"overlap_seconds": request.form.get("overlap_seconds") or 86400})
        secret = registered.rotate_secret(get_session(), endpoint,
                                          timedelta(seconds=overlap["overlap_seconds"]))
        record(get_session(), portal_session(), PortalAction.ROTATE_SECRET, ref)
    except (ValidationError, DelivererError) as exc:
        roll_back_refused(exc)
        flash("error", f"Secret not rotated: {_problem(exc)}")
        return redirect(url_for("portal.endpoint_settings", ref=ref))
    return _secret_page(endpoint, secret, created=False)


@bp.post("/endpoints/<ref>/test")
def test_endpoint(ref: str) -> Any:
    """A ``webhook.test`` event published to the endpoint (issue 19's service, on the
    audit trail and rate-limited), then its first attempt's outcome, shown on its
    Troubleshoot page."""
    if _endpoint(ref) is None:
        return not_found("endpoint")
    try:
        sent = send_test_event(get_session(), deliverer_settings(), principal(), ref)
    except DelivererError as exc:
        roll_back_refused(exc)
        flash("error", f"Test event refused: {refused(exc)}")
        return redirect(url_for("portal.endpoint_settings", ref=ref))
    send_and_show(sent.notification_id, "Test event",
                  "Test event delivered: your endpoint accepted it.")
    return redirect(url_for("portal.notification", notification_id=sent.notification_id))


@bp.post("/endpoints/<ref>/recover")
def recover_endpoint(ref: str) -> Any:
    """A fresh cycle for the endpoint's FAILED webhooks of a period, ticked: with those
    not sent while it was disabled (issue 19's recover: oldest first, at the drain rate;
    on the audit trail and rate-limited)."""
    if _endpoint(ref) is None:
        return not_found("endpoint")
    back = redirect(url_for("portal.endpoint_settings", ref=ref))
    try:
        window = RecoverFormSchema().load({"since": request.form.get("since", ""),
                                           "until": request.form.get("until") or None})
        done = recover(get_session(), deliverer_settings(), principal(), ref,
                       window["since"], window["until"],
                       include_not_sent=request.form.get("include_not_sent") == "1")
    except ValidationError as exc:
        roll_back_refused(exc)
        flash("error", f"Nothing recovered: {_problem(exc)}")
        return back
    except DelivererError as exc:
        roll_back_refused(exc)
        flash("error", f"Nothing recovered: {refused(exc)}")
        return back
    if not done.recovered:
        flash("ok", "No webhook of this endpoint to recover in that period.")
    else:
        more = " More are left: recover again to send the next ones." if done.more else ""
        flash("ok", f"{done.recovered} webhook(s) will be sent again, oldest first, "
                    f"{deliverer_settings().drain_rate:g} a second.{more}")
    return back
