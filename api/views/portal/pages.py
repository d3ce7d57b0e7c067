"""The portal's pages: endpoints, an endpoint's retry queue, a notification's attempts
(Troubleshoot), the event log and alerts. Reads only: the actions are in ``actions``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

from flask import g, request

from api.db import get_session, keep_after_rollback
from api.html import pretty, rel, ts
from api.views.console.filters import STATUSES
from api.views.portal.blueprint import (
    bp,
    deliverer_settings,
    not_found,
    page,
    partner_id,
    portal_session,
)
from deliverer.alerts.wording import SUBJECTS as ALERT_KINDS
from deliverer.errors import DelivererError
from deliverer.models import PortalSession, WebhookSettings, utcnow
from deliverer.partners import registered, webhook_settings
from deliverer.portal import queries, sessions
from deliverer.portal.chart import HEIGHT, WIDTH
from deliverer.portal.other_queues import other_queues


@bp.context_processor
def _helpers() -> dict[str, Any]:
    found = g.get("portal_session")
    return {"ts": ts, "rel": rel, "pretty": pretty, "csp_nonce": g.get("csp_nonce", ""),
            "csrf_token": g.get("portal_csrf", ""), "statuses": STATUSES,
            "signed_in": found is not None, "read_only": bool(found and found.read_only),
            "ref": queries.endpoint_ref, "chart_width": WIDTH, "chart_height": HEIGHT,
            "flashes": _pop_flashes(found)}


def _pop_flashes(found: PortalSession | None) -> list[tuple[str, str]]:
    """The session's flashes, shown once: on a page with a 4xx too, whose rollback would
    otherwise bring them back on the next page."""
    messages = sessions.pop_flash(found) if found is not None else []
    if found is not None and messages:
        found_id = found.id
        keep_after_rollback(lambda session: sessions.clear_flash(session, found_id))
    return messages


@bp.get("/")
def index() -> Any:
    session = get_session()
    summaries = queries.endpoints_overview(session, partner_id(), utcnow())
    count = registered.count_registered(session, partner_id())
    return page("portal/endpoints.html", endpoints=summaries,
                # At the limit the add form could only answer with it (a black-box try).
                at_limit=count if count >= deliverer_settings().max_endpoints_per_partner
                else None,
                others=other_queues(session, partner_id()),
                expires_at=portal_session().expires_at,
                webhooks_off=webhook_settings.turned_off(session, partner_id()))


@bp.get("/endpoints/<ref>")
def endpoint(ref: str) -> Any:
    session = get_session()
    found = queries.get_endpoint(session, partner_id(), ref)
    if found is None:
        return not_found("endpoint")
    # ``after``: the page link's sequence number; anything else shows the first page.
    queue = queries.retry_queue(session, found, request.args.get("after", type=int))
    return page("portal/endpoint.html", e=found, state=str(found.status),
                items=queue.items, queue=queue,
                chart=queries.attempts_chart(session, found, utcnow()))


@bp.get("/notifications/<notification_id>")
def notification(notification_id: str) -> Any:
    detail = queries.notification_detail(get_session(), partner_id(), notification_id)
    if detail is None:
        return not_found("notification")
    settings = deliverer_settings()
    headers = {a.id: queries.headers_sent(detail.notification.id, a, settings)
               for a in detail.attempts}
    return page("portal/notification.html", d=detail, n=detail.notification,
                headers=headers, max_retries=settings.max_manual_retries)


@bp.get("/notifications/<notification_id>/ignore")
def confirm_ignore(notification_id: str) -> Any:
    detail = queries.notification_detail(get_session(), partner_id(), notification_id)
    if detail is None:
        return not_found("notification")
    return page("portal/confirm_ignore.html", d=detail, n=detail.notification)


def _day(name: str, problems: list[str], *, end: bool = False) -> datetime | None:
    """A date filter (YYYY-MM-DD, UTC); ``end``: the day after it (the range includes it).
    Anything else is not applied, and said in ``problems``."""
    raw = request.args.get(name, "")
    if not raw:
        return None
    try:
        day = datetime.strptime(raw, "%Y-%m-%d").date()
        return datetime.combine(day, time(), UTC) + timedelta(days=1 if end else 0)
    except (ValueError, OverflowError):
        problems.append(f"“{raw}” is not a date (YYYY-MM-DD)")
        return None


@bp.get("/events")
def events() -> Any:
    """The event log. A filter that is not one (a status not listed, a date that is not
    one, a cursor not of ours) is not applied, and the page says so, with a 400."""
    args = request.args
    problems: list[str] = []
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        problems.append(f"“{status}” is not a delivery status")
        status = None
    created_from = _day("from", problems)
    created_to = _day("to", problems, end=True)
    # ``to`` is the day after To (an exclusive end): From a day after To is equal to it.
    if created_from and created_to and created_from >= created_to:
        # As Recover refuses it: an empty page read as "no event then" (the portal try).
        problems.append("“From” is later than “To”")
        created_from = created_to = None
    filters = queries.EventFilters(
        status=status,
        event_type=(args.get("type") or "").strip()[:100] or None,
        reference=(args.get("reference") or "").strip()[:200] or None,
        created_from=created_from, created_to=created_to,
        cursor=args.get("cursor") or None)
    try:
        rows, next_cursor = queries.event_log(get_session(), partner_id(), filters)
    except DelivererError:  # a cursor that is not one of ours
        problems.append("the page link is not one of this log's")
        rows, next_cursor = queries.event_log(get_session(), partner_id(),
                                              replace(filters, cursor=None))
    kept = {k: v for k, v in args.items() if k != "cursor" and v}
    return page("portal/events.html", 400 if problems else 200, rows=rows,
                next_cursor=next_cursor, args=args, kept=kept, filtered=bool(kept),
                first_page="cursor" in args, problems=problems)


@bp.get("/events/<event_id>")
def event(event_id: str) -> Any:
    row = queries.get_event(get_session(), partner_id(), event_id)
    if row is None:
        return not_found("event")
    return page("portal/event.html", row=row)


@bp.get("/alerts")
def alerts() -> Any:
    session = get_session()
    settings_row = session.get(WebhookSettings, partner_id())
    return page("portal/alerts.html", alerts=queries.alerts_of(session, partner_id()),
                alert_kinds=ALERT_KINDS,
                alert_email=settings_row.alert_email if settings_row else None,
                smtp=bool(deliverer_settings().smtp_url))
