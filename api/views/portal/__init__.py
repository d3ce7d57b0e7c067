"""``/portal``: the merchant portal, server-rendered HTML (plain forms, no JavaScript), for
one partner's staff: its endpoints and their retry queues, Troubleshoot, Retry and
Ignore, the event log, alerts, endpoint settings and Diagnose.

Getting in: a single-use link from ``POST /internal/v1/partners/{id}/portal-sessions``
or ``POST /api/partner/v2/portal-sessions`` (``auth``). Everything a page shows is the
session's partner's: another partner's ids answer 404, as unknown ones do.
"""

from api.views.portal import actions, auth, diagnosis, endpoints, pages, wording
from api.views.portal.blueprint import bp

# Each module registers its routes and hooks on ``bp`` as it is imported.
__all__ = ["actions", "auth", "bp", "diagnosis", "endpoints", "pages", "wording"]
