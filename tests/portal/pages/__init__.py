"""The portal's pages over HTTP: endpoints, actions, the event log and alerts, every page.

The asserts of helpers.py are rewritten by pytest, as they were in the test module they
came from."""

import pytest

pytest.register_assert_rewrite("tests.portal.pages.helpers")
