"""Failing-endpoint alerts (seed 003: a notification after the fifth failed retry).

An alert is raised once per failing period of an endpoint, recorded in ``alerts``
(listed by ``GET /api/partner/v2/webhook-alerts``) and e-mailed to the partner's alert
address when one is set, by a task sent after the commit. An alert whose message was lost
(the broker was down at the commit), whose task gave up (SMTP down for longer than its
retries) or whose worker died while sending is offered again by beat's alert sweep for a
day (``enqueue_unmailed``).

E-mailing is at least once, and at most once per claim: a worker claims the alert for
``email_claim`` (the longest SMTP conversation, then recording it) before sending, and
``emailed_at`` is set only once the server has accepted the message.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from deliverer import lease
from deliverer.alerts.wording import KIND_AUTO_DISABLED, KIND_DISABLED, KIND_FAILING, email_text
from deliverer.broker.dispatch import enqueue_alert_email
from deliverer.config import Settings
from deliverer.cursors import decode_cursor, encode_cursor
from deliverer.db import in_transaction, on_commit, session_scope
from deliverer.models import Alert, Endpoint, WebhookSettings, utcnow
from deliverer.models import endpoint as endpoint_model

log = logging.getLogger(__name__)

# "After the fifth retry": the first attempt plus five automatic retries have failed.
ALERT_AFTER_FAILED_RETRIES = 5
# A failing alert is e-mailed at most this often per endpoint (times the time scale):
# a flapping endpoint (30% of its answers 500 in the operator try) began a failing period
# with every failure after a success, and mailed its merchant 8 times in 3 minutes. The
# alerts are still recorded, one per period; a later one waits for the alert sweep.
EMAIL_COOLDOWN = timedelta(hours=1)

# The alert sweep offers an un-mailed alert again once the first task and its retries
# (about 2.5 minutes) had their chance, for up to a day after it was raised, so many
# per run at the most.
UNMAILED_AFTER = timedelta(minutes=5)
UNMAILED_MAX_AGE = timedelta(hours=24)
UNMAILED_PER_SWEEP = 100


def email_claim(settings: Settings) -> timedelta:
    """How long a worker may hold an alert it is e-mailing: the SMTP conversation (at most
    ``LONGEST_SEND``: by then the server has accepted the message or never will), then
    recording it, retried for up to lease_seconds through database hiccups. Past it the
    worker is taken for dead and another task, or the alert sweep, may e-mail the alert."""
    from deliverer.alerts.mailer import LONGEST_SEND

    return timedelta(seconds=LONGEST_SEND + settings.lease_seconds)


def _free_to_claim(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Not e-mailed, and nobody's claim (or one that ran out: its worker died)."""
    return (Alert.emailed_at.is_(None), lease.is_free(Alert.email_claimed_until, now))


def _current() -> ColumnElement[bool]:
    """Whether an alert still says what is true of its endpoint (joined): a failing one
    still failing since before it (not recovered, moved or disabled since: the disabled
    alert says more), a disabled one still disabled since. Only those are e-mailed: one
    mailed late (SMTP was down, the address was set afterwards) told a merchant to fix
    an endpoint that had recovered, or to retry one that was disabled."""
    return or_(
        and_(Alert.kind == KIND_FAILING, Endpoint.disabled_at.is_(None),
             Endpoint.failing_since.is_not(None), Endpoint.failing_since <= Alert.created_at),
        and_(Alert.kind.in_((KIND_DISABLED, KIND_AUTO_DISABLED)),
             Endpoint.disabled_at.is_not(None), Endpoint.disabled_at <= Alert.created_at))


def describe(endpoint: Endpoint) -> str:
    """The endpoint as alerts name it: a merchant with several endpoints must tell which
    one failed (its URL, the id the API shows, its description)."""
    named = f"{endpoint.url} ({endpoint.public_id}"
    if endpoint.description:
        named += f", \"{endpoint.description}\""
    return named + ")"


def how_to_enable(endpoint: Endpoint) -> str:
    return endpoint_model.how_to_enable(
        public_id=endpoint.public_id, is_default=endpoint.is_default,
        registered=endpoint.registered, disabled_reason=endpoint.disabled_reason)


def raise_alert(session: Session, endpoint: Endpoint, kind: str, message: str, *,
                notification_id: str | None, now: datetime) -> Alert:
    alert = Alert(partner_id=endpoint.partner_id, endpoint_id=endpoint.id, kind=kind,
                  message=message, notification_id=notification_id, created_at=now)
    session.add(alert)
    session.flush()
    alert_id = alert.id
    named = f"{endpoint.public_id} of partner {endpoint.partner_id}"

    def committed() -> None:
        # An operator greps the logs for failing and disabled endpoints; logged on commit,
        # once, whatever transactions ran again before it.
        log.warning("alert %s (%s) for endpoint %s: %s", alert_id, kind, named, message)
        enqueue_alert_email(alert_id)

    on_commit(session, committed)
    return alert


def list_alerts(session: Session, partner_id: str, limit: int = 50,
                cursor: str | None = None
                ) -> tuple[list[tuple[Alert, str | None]], str | None]:
    """The partner's alerts, newest first, each with its endpoint's public id (the id
    the endpoints API takes), and the cursor of the next page (None: the last)."""
    query = (select(Alert, Endpoint.public_id)
             .outerjoin(Endpoint, Endpoint.id == Alert.endpoint_id)
             .where(Alert.partner_id == partner_id))
    if cursor:
        created_at, alert_id = decode_cursor(cursor, is_id=lambda text: text.isdigit()
                                             and int(text) < 2**63)
        # A row-value comparison: an index range, where the OR's form is a filter.
        query = query.where(tuple_(Alert.created_at, Alert.id) < (created_at, int(alert_id)))
    found = session.execute(
        query.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit + 1))
    rows: list[tuple[Alert, str | None]] = [(alert, public_id) for alert, public_id in found]
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1][0] if more else None
    return rows, encode_cursor(last.created_at, str(last.id)) if last else None


def unmailed_alerts(session: Session, settings: Settings, now: datetime,
                    limit: int = UNMAILED_PER_SWEEP) -> list[int]:
    """Recent alerts still to be e-mailed to an address, oldest first (none without SMTP)."""
    if not settings.smtp_url:
        return []
    return list(session.scalars(
        select(Alert.id)
        .join(WebhookSettings, WebhookSettings.partner_id == Alert.partner_id)
        .join(Endpoint, Endpoint.id == Alert.endpoint_id)
        # Served by the partial index ix_alerts_unmailed: O(recent unmailed alerts).
        .where(*_free_to_claim(now), _current(), Alert.email_error.is_(None),
               Alert.created_at >= now - UNMAILED_MAX_AGE,
               Alert.created_at <= now - UNMAILED_AFTER,
               WebhookSettings.alert_email.is_not(None), WebhookSettings.alert_email != "")
        .order_by(Alert.created_at, Alert.id).limit(limit)
    ))


def on_failed_retry(session: Session, endpoint: Endpoint, notification_id: str,
                    failures: int, error_message: str | None, now: datetime) -> None:
    """An automatic retry to ``endpoint`` failed, the ``failures``-th in a row of its
    notification: past ``ALERT_AFTER_FAILED_RETRIES``, alert once per failing period (the
    endpoint's ``alerted_at``, cleared when it recovers)."""
    if endpoint.alerted_at is not None or failures <= ALERT_AFTER_FAILED_RETRIES:
        return
    endpoint.alerted_at = now
    # The endpoint's count, every attempt since its last success (what the portal and
    # the console show), not this notification's: the alert said 6 where 87 had failed.
    raise_alert(session, endpoint, KIND_FAILING,
                f"Webhook endpoint {describe(endpoint)} has failed "
                f"{max(endpoint.consecutive_failures, failures)} attempts in a row; "
                f"last error: {error_message}",
                notification_id=notification_id, now=now)


def enqueue_unmailed(settings: Settings, now: datetime | None = None) -> int:
    """The alert sweep: send another e-mail task for each alert ``unmailed_alerts`` finds.

    Alerts being sent are left alone; those whose claim ran out (their worker died mid-send)
    are offered again. Safe while an earlier task for the same alert is queued: whichever
    runs first claims the alert (``email_alert``), the other finds it claimed and sends
    nothing.
    """
    with session_scope() as session:
        alert_ids = unmailed_alerts(session, settings, now or utcnow())
    for alert_id in alert_ids:
        enqueue_alert_email(alert_id)
    return len(alert_ids)


def email_alert(alert_id: int, settings: Settings) -> bool:
    """Send the alert's e-mail, unless it was sent or is being sent. Returns whether a
    message went out.

    The claim is ``email_claimed_until``, set by a conditional UPDATE committed before the
    SMTP conversation, so a second task for the alert (the sweep's, a duplicate) sends
    nothing while this one holds it. ``emailed_at`` is set once the server has accepted the
    message, so a worker that dies mid-send (``kill -9``, out of memory) leaves the alert
    un-mailed: once its claim has run out, a redelivered task or the alert sweep sends it.
    A send that fails gives the claim back, and the task's retries or the sweep try again.
    """
    from deliverer.alerts.mailer import (
        SmtpConfigError,
        message_id,
        permanent_refusal,
        send_mail,
    )

    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        if alert is None or alert.emailed_at is not None or alert.email_error is not None:
            return False
        if session.scalar(select(Alert.id).join(Endpoint, Endpoint.id == Alert.endpoint_id)
                          .where(Alert.id == alert_id, _current())) is None:
            log.info("alert %s not e-mailed: its endpoint has changed since", alert_id)
            return False
        if _mailed_lately(session, alert, settings):
            log.info("alert %s e-mailed later: one of its endpoint's failing alerts was "
                     "e-mailed within %s", alert_id, EMAIL_COOLDOWN * settings.time_scale)
            return False
        webhook_settings = session.get(WebhookSettings, alert.partner_id)
        endpoint = session.get(Endpoint, alert.endpoint_id)
        to = webhook_settings.alert_email if webhook_settings else None
        if not to or not settings.smtp_url:
            return False
        subject, body = email_text(alert, endpoint)
        # The same on every try of this alert, and no other's: mail providers drop a
        # second message with a Message-ID they have seen (another installation's alert
        # of the same number, say).
        alert_token = f"deliverer-alert-{alert_id}.{alert.created_at.timestamp():.6f}"
        claimed_until = claim_alert_email(session, alert_id, settings)
        if claimed_until is None:
            return False
    try:
        send_mail(settings.smtp_url, settings.alert_sender, to, subject, body,
                  message_id=message_id(settings.alert_sender, alert_token))
    except SmtpConfigError as exc:
        # Retrying cannot help; the alert waits, un-mailed, for the settings to be fixed.
        log.error("alert %s not e-mailed: %s", alert_id, exc)
        _unclaim(alert_id, claimed_until, settings)
        return False
    except BaseException as exc:
        refusal = permanent_refusal(exc)
        if refusal is None:
            _unclaim(alert_id, claimed_until, settings)
            raise
        # Not tried again (every five minutes for a day, a traceback each time): said
        # where the merchant and the operators look.
        log.warning("alert %s not e-mailed to %s: the mail server refused it: %s",
                    alert_id, to, refusal)
        in_transaction(lambda session: session.execute(
            update(Alert).where(Alert.id == alert_id)
            .values(email_error=refusal[:500], email_claimed_until=None)),
            retry_for=settings.lease_seconds)
        return False
    # Accepted (send_mail does not raise for a failed QUIT after that). Recorded through
    # database hiccups: left unrecorded, the claim would run out and a second e-mail go.
    in_transaction(
        lambda session: session.execute(
            update(Alert).where(Alert.id == alert_id, Alert.emailed_at.is_(None))
            .values(emailed_at=utcnow(), email_claimed_until=None)),
        retry_for=settings.lease_seconds)
    return True


def _mailed_lately(session: Session, alert: Alert, settings: Settings) -> bool:
    """Whether another failing alert of the endpoint was e-mailed within the cool-down.
    The alert sweep offers this one again (every 5 minutes, for a day): it goes once
    the cool-down has passed if it is still true (the endpoint still failing since)."""
    if alert.kind != KIND_FAILING or alert.endpoint_id is None:
        return False
    since = utcnow() - EMAIL_COOLDOWN * settings.time_scale
    return session.scalar(
        select(Alert.id).where(Alert.partner_id == alert.partner_id,  # its index
                               Alert.endpoint_id == alert.endpoint_id,
                               Alert.kind == KIND_FAILING, Alert.id != alert.id,
                               Alert.emailed_at > since).limit(1)) is not None


def claim_alert_email(session: Session, alert_id: int, settings: Settings,
                      now: datetime | None = None) -> datetime | None:
    """Claim the alert for e-mailing it (the caller commits): until when, or None when it
    is e-mailed already or claimed by a worker that is (or may still be) sending it."""
    now = now or utcnow()
    until = now + email_claim(settings)
    taken = lease.take(session, Alert.email_claimed_until, until, now, Alert.id == alert_id,
                       Alert.emailed_at.is_(None))
    return until if taken == 1 else None


def _unclaim(alert_id: int, claimed_until: datetime, settings: Settings) -> None:
    # Retried through a database hiccup: a claim left behind delays the e-mail until it
    # runs out. Only our own claim: had ours run out and another worker claimed the alert
    # since, freeing its claim would let a third send at the same time.
    in_transaction(
        lambda session: lease.give_back(session, Alert.email_claimed_until, claimed_until,
                                        Alert.id == alert_id),
        retry_for=settings.lease_seconds)
