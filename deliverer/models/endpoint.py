from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Select,
    String,
    Text,
    UniqueConstraint,
    case,
    exists,
    false,
    func,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, constant, utcnow


class EndpointStatus(StrEnum):
    ACTIVE = "ACTIVE"
    FAILING = "FAILING"
    DISABLED = "DISABLED"


PUBLIC_ID_PREFIX = "ep_"


def new_endpoint_id() -> str:
    return PUBLIC_ID_PREFIX + secrets.token_hex(12)


# What a registered endpoint has of its own (a secret, a rate limit and its slot): none
# of it carries over when its row is taken for another use (the webhook URL:
# ``default_endpoint.make_default``; a callback URL after its deletion:
# ``endpoints._by_url_again``).
OWN_CONFIGURATION = ("signing_secret", "previous_secret", "previous_secret_expires_at",
                     "rate_limit", "next_send_at", "create_key", "create_asked")

# The reason of an endpoint the merchant disabled (enabled: false): saving the webhook
# settings does not enable it again, only the merchant's enabled: true does.
DISABLED_BY_MERCHANT = "Disabled by the merchant"
# An operator's (``deliverer endpoint disable``), with its reason after a colon. Saving
# the webhook settings does not enable it either; the merchant's enabled: true does.
DISABLED_BY_OPERATOR = "Disabled by the operator"


def disabled_on_purpose(disabled_reason: str | None) -> bool:
    """Disabled by the merchant or an operator, not by a 410 or days of failures."""
    return disabled_reason is not None and (
        disabled_reason == DISABLED_BY_MERCHANT
        or disabled_reason.startswith(DISABLED_BY_OPERATOR))


def disabled_on_purpose_sql() -> ColumnElement[bool]:
    """``disabled_on_purpose`` of an endpoint row, in SQL (never NULL)."""
    reason = func.coalesce(Endpoint.disabled_reason, "")
    return or_(reason == DISABLED_BY_MERCHANT, reason.startswith(DISABLED_BY_OPERATOR))


def how_to_enable(*, public_id: str, is_default: bool, registered: bool,
                  disabled_reason: str | None) -> str:
    """What the merchant does to enable a disabled endpoint (alerts and refused retries
    say it): saving the webhook settings enables the one at the webhook URL
    (``webhook_settings.resume_deliveries``), unless the merchant disabled it; an
    unregistered one (an event's callback URL, an earlier webhook URL) is enabled by
    registering its URL, which takes its row over (``registered.create``)."""
    if not registered:
        return "register its URL with POST /api/partner/v2/endpoints"
    if is_default and not disabled_on_purpose(disabled_reason):
        return "save your webhook settings"
    return f"PATCH /api/partner/v2/endpoints/{public_id} with enabled: true"


class Endpoint(Base):
    """One webhook URL of one partner: the unit of ordering, sequencing and health.

    ``last_sequence`` hands out gap-free sequence numbers: it is bumped in the same
    transaction that inserts the notification, so a rolled-back publish leaves no hole.

    A *registered* endpoint receives the partner's events (fan-out), filtered by its
    ``event_types``: those the merchant creates under ``/api/partner/v2/endpoints``, and
    its *default* endpoint, the URL of its webhook settings. Rows created for an event's
    own ``callbackUrl`` are not registered: they only order and sequence those events.
    """

    __tablename__ = "endpoints"
    __table_args__ = (
        UniqueConstraint("partner_id", "url"),
        # Fan-out reads a partner's registered endpoints on every publish.
        Index(None, "partner_id", "registered"),
        # Wake-ups waiting behind a backlog, the longest-waiting first (delivery/wakeups/wake.py).
        Index("ix_endpoints_wake_sent_at", "wake_sent_at",
              postgresql_where=text("wake_sent_at IS NOT NULL"),
              sqlite_where=text("wake_sent_at IS NOT NULL")),
        # The endpoints a group's wake-up is for, the longest-waiting first
        # (delivery/wakeups/wake_groups.py; 64 is models.wake_group.WAKE_GROUPS).
        Index("ix_endpoints_wake_group", text("(id % 64)"), "wake_sent_at",
              postgresql_where=text("wake_sent_at IS NOT NULL"),
              sqlite_where=text("wake_sent_at IS NOT NULL")),
        # A create repeated under its Idempotency-Key (partners/create_keys.py).
        Index("ix_endpoints_create_key", "partner_id", "create_key",
              postgresql_where=text("create_key IS NOT NULL"),
              sqlite_where=text("create_key IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    # The id the partner API shows: the integer key would tell merchants how many
    # endpoints exist.
    public_id: Mapped[str] = mapped_column(String(40), unique=True, default=new_endpoint_id)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    url: Mapped[str] = mapped_column(Text)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    registered: Mapped[bool] = mapped_column(default=False, server_default=false())
    is_default: Mapped[bool] = mapped_column(default=False, server_default=false())
    description: Mapped[str | None] = mapped_column(Text)
    # Names from the catalog, prefix wildcards ("transaction.*") or "*"; NULL is ["*"].
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    # Deliveries per second; NULL: no limit. next_send_at is the limiter's next free slot.
    rate_limit: Mapped[float | None] = mapped_column(Float)
    next_send_at: Mapped[datetime | None]
    # NULL: deliveries are signed with the partner's webhook-settings secrets (the
    # default endpoint, callback URLs).
    signing_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    # Health, for the per-endpoint retry queue and alerts.
    failing_since: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_success_at: Mapped[datetime | None]
    last_failure_at: Mapped[datetime | None]
    # That failure's error payload: the console lists it per endpoint without reading
    # attempts (one look-up per endpoint took 28-50 s a page at 5 M attempts).
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set when the receiver answered 410 Gone, by the merchant (enabled: false), by an
    # operator, or after failing for days on end (auto-disable).
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    # Earliest time the receiver asked us to come back (Retry-After on 429/503).
    retry_after_until: Mapped[datetime | None]
    # Recovered with held notifications still to release (the sweep drains them).
    draining: Mapped[bool] = mapped_column(default=False, server_default=false())
    # One failing-endpoint alert per failing period.
    alerted_at: Mapped[datetime | None]
    # When the wake-up now pending for the endpoint (its own or its group's) was sent,
    # NULL: none. A publish sends one only when none is (``delivery/wakeups/wake.py``).
    wake_sent_at: Mapped[datetime | None]
    # Whose wake-up that is: the group's (``delivery/wakeups/wake_groups.py``) or the endpoint's
    # own. Read only while wake_sent_at is set.
    wake_by_group: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The Idempotency-Key of the create that made it, and a hash of what that create
    # asked for (``partners.create_keys``): a repeated create finds it.
    create_key: Mapped[str | None] = mapped_column(String(255))
    create_asked: Mapped[str | None] = mapped_column(String(64))

    @property
    def status(self) -> EndpointStatus:
        if self.disabled_at is not None:
            return EndpointStatus.DISABLED
        if self.failing_since is not None:
            return EndpointStatus.FAILING
        return EndpointStatus.ACTIVE

    @property
    def subscriptions(self) -> list[str]:
        return list(self.event_types) if self.event_types else ["*"]

    @property
    def settings_tag(self) -> str:
        """A tag of the settings a form shows: a form saved with another tag was loaded
        before a change it would undo (``registered.update_endpoint``'s ``expect_tag``)."""
        shown = json.dumps([self.url, self.description, self.subscriptions, self.rate_limit])
        return hashlib.sha256(shown.encode()).hexdigest()[:16]


def subscribed(event_types: list[str] | None, event_type: str) -> bool:
    """Whether an endpoint subscribed to ``event_types`` receives ``event_type``."""
    for pattern in event_types or ["*"]:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def subscribed_in_sql(event_types: ColumnElement[Any], event_type: ColumnElement[str]
                      ) -> ColumnElement[bool]:
    """``subscribed`` as a PostgreSQL condition, for a publish decided in one statement
    (``publishing/one_statement.py``): the same rules, kept beside them. NULL, JSON null
    and an empty list are ``["*"]`` (so is any other non-list, which nothing writes).
    CASE: PostgreSQL does not promise to evaluate OR's operands in order, and
    ``json_array_length`` fails on what is not an array."""
    pattern = func.json_array_elements_text(event_types).table_valued("value").alias("pattern")
    value = pattern.c.value
    matches = exists(select(true()).select_from(pattern).where(or_(
        value == constant("*"), value == event_type,
        (func.right(value, constant(2)) == constant(".*"))
        & func.starts_with(event_type, func.left(value, constant(-1))))))
    return case(
        (or_(event_types.is_(None), func.json_typeof(event_types) != constant("array")),
         true()),
        (func.json_array_length(event_types) == constant(0), true()),
        else_=matches)


def locked_in_id_order(*where: ColumnElement[bool]) -> ColumnElement[bool]:
    """The WHERE of a statement that updates several endpoint rows: the rows ``where``
    selects, locked first and in id order (FOR NO KEY UPDATE, which a record
    transaction's FOR KEY SHARE does not block).

    Every transaction that holds several endpoints takes them in id order (records:
    ``success.lock_endpoints``). An UPDATE alone locks rows in the order its plan meets
    them, which is not id order once updates have moved rows about the heap and the
    indexes (the wake-up marks, indexed, move a row on every change): two transactions
    then each held a row the other waited for. The rows' latest versions are checked
    against ``where`` again as they are locked."""
    return Endpoint.__table__.c.id.in_(ids_locked_in_order(*where).scalar_subquery())


def ids_locked_in_order(*where: ColumnElement[bool]) -> Select[tuple[int]]:
    """The ids of the endpoint rows ``where`` selects, locked FOR NO KEY UPDATE in id
    order (``locked_in_id_order`` says why)."""
    e = Endpoint.__table__.c
    return select(e.id).where(*where).order_by(e.id).with_for_update(key_share=True)
