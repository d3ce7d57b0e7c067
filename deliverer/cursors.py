"""Keyset cursors for newest-first lists: the position after the last row shown, as
(created_at, id), opaque to the client (notifications, the portal's event log, alerts)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime

from deliverer.errors import DelivererError


class InvalidCursor(DelivererError):
    message = "Invalid cursor"


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, is_id: Callable[[str], bool]) -> tuple[datetime, str]:
    """(created_at, id) of ``cursor``; ``is_id``: whether the id is one of the list's."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not is_id(row_id):
            raise InvalidCursor()
        created_at = created_at.astimezone(UTC)  # OverflowError for 0001-01-01T00:00+01:00
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor() from exc
    return created_at, row_id
