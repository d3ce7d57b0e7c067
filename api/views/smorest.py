"""flask-smorest's Blueprint as the API's views use it: its arguments' validation fails
with 400, which ``api.errors`` answers and the OpenAPI document then says (webargs'
default, 422, was documented on every operation and never answered)."""

from __future__ import annotations

import flask_smorest
from webargs.flaskparser import FlaskParser


class _Parser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = _Parser()
