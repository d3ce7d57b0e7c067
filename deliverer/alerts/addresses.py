"""Whether an alert address can be mailed: what the API's schema and the CLI check
before saving one (a mistyped address is otherwise found only at the first alert)."""

from __future__ import annotations

from marshmallow import ValidationError, validate

MAX_ADDRESS = 320
NOT_AN_ADDRESS = "Not a valid email address."
UNDELIVERABLE = ("Not a deliverable e-mail address: its part before @ may have 64 "
                 "characters, after it 255.")


def length_problem(address: str) -> str | None:
    """RFC 5321's limits, which a mail server refuses past: a local part of 64 octets, a
    domain of 255 (marshmallow's Email checks the form only)."""
    local, _, domain = address.rpartition("@")
    if len(local.encode()) > 64 or len(domain.encode()) > 255:
        return UNDELIVERABLE
    return None


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be an alert address (None: it can)."""
    if len(address) > MAX_ADDRESS:
        return f"Longer than {MAX_ADDRESS} characters."
    try:
        validate.Email(error=NOT_AN_ADDRESS)(address)
    except ValidationError:
        return NOT_AN_ADDRESS
    return length_problem(address)
