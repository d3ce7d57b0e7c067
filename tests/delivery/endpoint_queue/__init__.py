"""Per-endpoint retry queues: probing, an endpoint disabled, the repair, URL moves.

The asserts of helpers.py are rewritten by pytest, as they were in the test module they
came from."""

import pytest

pytest.register_assert_rewrite("tests.delivery.endpoint_queue.helpers")
