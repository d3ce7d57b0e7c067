"""Ids as the commands take them: a partner id pasted in capitals is the same partner, as
the API reads UUIDs in either case (the operator try: 'Partner not found')."""

from __future__ import annotations

from typing import Any

import click


def partner_id(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """A click callback: a UUID as stored (lower case); anything else as given."""
    if not isinstance(value, str):
        return value
    from deliverer.notifications.queries import canonical_id  # --help stays fast

    return canonical_id(value.strip())
