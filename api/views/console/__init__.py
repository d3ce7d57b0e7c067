"""``/console``: the operator console, server-rendered HTML (plain forms, no JavaScript).

Who may use it: whoever knows ``DELIVERER_ADMIN_TOKEN``, by the sign-in form (a signed
session cookie, 12 hours) or HTTP Basic auth (any user name, the token as password; for
scripts). Without a configured token the console is closed. The cookie is signed with
``DELIVERER_SECRET_KEY``, or with a key derived from the admin token, so rotating the
token signs everybody out.

Every form (sign-in included) carries a CSRF token kept in the session, compared in
constant time. Pages are sent with a strict Content-Security-Policy (no scripts at all,
styles by nonce), no caching and no framing.

Retry and Ignore call the operator services of ``deliverer.operations.replay``: the
same state changes as the partner API's, recorded on the audit trail with the outcome
``OPERATOR``, and an operator's retry is not bound by the merchant's limits.
"""

from api.views.console import auth, filters, pages
from api.views.console.blueprint import bp

# auth, filters and pages register their routes and hooks on ``bp`` as they are imported.
__all__ = ["auth", "bp", "filters", "pages"]
