"""The slow lane: the gate, batches, deferrals.

The asserts of helpers.py are rewritten by pytest, as they were in the test module they
came from."""

import pytest

pytest.register_assert_rewrite("tests.delivery.slow_lane.helpers")
