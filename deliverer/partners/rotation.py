"""Rotating a signing secret with an overlap: the one transition, for the partner's
webhook-settings secret and for a registered endpoint's own."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from deliverer.delivery.sending import signing
from deliverer.errors import Conflict, ValidationFailed

MAX_OVERLAP = timedelta(days=7)
ROTATION_IN_PROGRESS = ("A secret rotation is in progress until {until}. The current secret "
                        "is in GET /webhook-settings; rotate with overlapSeconds 0 to drop "
                        "every older secret now.")


class HasSecrets(Protocol):
    signing_secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None


def rotate(row: HasSecrets, overlap: timedelta, now: datetime,
           in_progress: str = ROTATION_IN_PROGRESS) -> str:
    """New secret now; the old one keeps signing alongside it until the overlap ends.
    Returns the new secret."""
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise ValidationFailed("overlapSeconds must be between 0 and 604800")
    expires = row.previous_secret_expires_at
    if overlap > timedelta(0) and row.previous_secret and expires and expires > now:
        # A second rotation would drop the secret receivers may still verify with for the
        # current one, which they may never have seen (a client retrying a rotation whose
        # answer it lost). Overlap 0 drops every older secret at once (a leaked one).
        raise Conflict(in_progress.format(until=expires.isoformat().replace("+00:00", "Z")))
    row.previous_secret = row.signing_secret if overlap > timedelta(0) else None
    row.previous_secret_expires_at = now + overlap if overlap > timedelta(0) else None
    row.signing_secret = signing.generate_secret()
    return row.signing_secret
