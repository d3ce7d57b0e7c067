"""Bad input of every kind: a clear 4xx in the error format, never a 500, nothing written.

The asserts of helpers.py are rewritten by pytest, as they were in the test module they
came from."""

import pytest

pytest.register_assert_rewrite("tests.api.bad_input.helpers")
