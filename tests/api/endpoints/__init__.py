"""/api/partner/v2/endpoints: its life cycle, validation, access and limits, alerts.

The asserts of helpers.py are rewritten by pytest, as they were in the test module they
came from."""

import pytest

pytest.register_assert_rewrite("tests.api.endpoints.helpers")
