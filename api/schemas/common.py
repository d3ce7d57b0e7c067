from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from deliverer.alerts import addresses
from deliverer.notifications.queries import canonical_id


class WebhookUrl(fields.String):
    """An http(s) URL; where it may point is checked by the service (SSRF rules)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            validate=[validate.Length(max=2048),
                      validate.URL(schemes={"http", "https"}, require_tld=False)],
            **kwargs,  # type: ignore[arg-type]
        )


class JsonBool(fields.Boolean):
    """true or false, as JSON writes them: marshmallow's Boolean also reads "yes", "on",
    "t", 1 and their opposites, so a typo ("flase") is refused but "no" is taken."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class JsonNumber(fields.Float):
    """A JSON number: marshmallow's Float also reads "5" and true (a bool is an int)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Id(fields.String):
    """An id of ours: a UUID is read in either case (RFC 9562) and stored lower-case,
    as ``api.guards.canonical_ids`` does for the path."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return canonical_id(super()._deserialize(value, attr, data, **kwargs))


class HeaderText(fields.String):
    """A header's text. WSGI hands a header's bytes over as Latin-1; bytes that are UTF-8
    (as most clients send text that is not ASCII) are read as UTF-8, so that a key sent
    over HTTP is the same key as given to the Python API. Others stay Latin-1."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return text


def _deliverable(address: str) -> None:
    problem = addresses.length_problem(address)
    if problem is not None:
        raise ValidationError(problem)


class Email(fields.Email):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(validate=[validate.Length(max=addresses.MAX_ADDRESS), _deliverable],
                         **kwargs)  # type: ignore[arg-type]


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 date-time with an offset, converted to UTC (out-of-range: a 400)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=None, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            # 0001-01-01T00:00:00+01:00 parses, but is before year 1 in UTC.
            return parsed.astimezone(UTC)
        except OverflowError as exc:
            raise ValidationError("Date-time out of range.") from exc


class ApiErrorSchema(Schema):
    """The error body of every endpoint."""

    statusCode = fields.Integer(required=True)
    code = fields.String(required=True)
    message = fields.String(required=True)
    errors = fields.Raw()


# A 429's header, as the OpenAPI document declares it (every 429 the API answers sets it).
RETRY_AFTER = {"Retry-After": {
    "description": "Seconds to wait before sending the request again",
    "schema": {"type": "integer", "minimum": 1}}}
