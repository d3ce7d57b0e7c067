"""The alert e-mail tests' SMTP server: a real one on loopback, and its inbox."""

from __future__ import annotations

import pytest

from tests.support.smtp import Inbox, serve


@pytest.fixture
def smtp_inbox():
    inbox = Inbox()
    with serve(inbox) as port:
        yield inbox, f"smtp://127.0.0.1:{port}"
