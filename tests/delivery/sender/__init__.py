"""The sender, one question a module: outcomes, the SSRF guard, what it keeps of an answer.

The asserts of helpers.py are rewritten by pytest, as they were in the test module they
came from."""

import pytest

pytest.register_assert_rewrite("tests.delivery.sender.helpers")
