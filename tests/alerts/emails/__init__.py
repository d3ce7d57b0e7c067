"""Alert e-mails: how they are sent, the sweep, and one mail per alert.

The asserts of helpers.py are rewritten by pytest, as they were in the test module they
came from."""

import pytest

pytest.register_assert_rewrite("tests.alerts.emails.helpers")
