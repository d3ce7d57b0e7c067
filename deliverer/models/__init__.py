"""The data model. Importing this package registers every table on ``Base.metadata``."""

from deliverer.models.alert import Alert
from deliverer.models.base import Base, table_of, utcnow
from deliverer.models.endpoint import Endpoint, EndpointStatus, locked_in_id_order, subscribed
from deliverer.models.event import Event
from deliverer.models.maintenance import MaintenanceRun
from deliverer.models.notification import (
    Attempt,
    Lane,
    Notification,
    NotificationStatus,
    Trigger,
    still_to_try,
)
from deliverer.models.partner import (
    ApiKey,
    Partner,
    PartnerFlow,
    WebhookSettings,
    active_secrets,
    not_receiving_webhooks,
    signing_secrets,
)
from deliverer.models.portal import PortalSession, PortalSignIn
from deliverer.models.request_log import PartnerRequest, RequestKind, ResendStatus
from deliverer.models.wake_group import WAKE_GROUPS, WakeGroup, endpoint_group

__all__ = [
    "WAKE_GROUPS",
    "Alert",
    "ApiKey",
    "Attempt",
    "Base",
    "Endpoint",
    "EndpointStatus",
    "Event",
    "Lane",
    "MaintenanceRun",
    "Notification",
    "NotificationStatus",
    "Partner",
    "PartnerFlow",
    "PartnerRequest",
    "PortalSession",
    "PortalSignIn",
    "RequestKind",
    "ResendStatus",
    "Trigger",
    "WakeGroup",
    "WebhookSettings",
    "active_secrets",
    "endpoint_group",
    "locked_in_id_order",
    "not_receiving_webhooks",
    "signing_secrets",
    "still_to_try",
    "subscribed",
    "table_of",
    "utcnow",
]
