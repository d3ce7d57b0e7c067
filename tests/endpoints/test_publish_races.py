"""A change of a partner's endpoints and a publish by URL to the same URL, at once.

An endpoint create, PATCH or webhook-settings save checks whether the URL has a row,
then writes one; a publish by URL (an event's callback URL) creates the row on first
use. A publish committed between the check and the write made the change fail on the
unique (partner_id, url) constraint: a 500 (a black-box try). The change now holds the
partner's publishes (``endpoints.hold_publishes``) from its check to its commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from deliverer.db import get_database
from deliverer.models import Endpoint
from deliverer.partners import registered, webhook_settings
from deliverer.publishing.own_transaction import publish_one
from tests.support.backend import ON_POSTGRES
from tests.support.helpers import new_partner
from tests.support.waiting import PUBLISH_STATEMENT, lock_wait_of, wait_until

pytestmark = pytest.mark.skipif(not ON_POSTGRES, reason="SQLite's writers take turns")

URL = "http://127.0.0.1:9/racing"


def _publish_between_check_and_write(settings: Any, partner_id: str,
                                     change: Callable[[Session], object]) -> list[Any]:
    """Run ``change`` in a transaction; right after its look-up of the URL's row, a
    publish by that URL runs in a thread until it commits or waits for a lock."""
    published: list[Any] = []
    started: list[bool] = []
    publisher = threading.Thread(target=lambda: published.append(publish_one(
        settings, partner_id=partner_id, type="transaction.paid", reference="cb",
        payload={}, callback_url=URL)))

    def after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not started and "endpoints.url =" in statement and "FOR UPDATE" in statement:
            started.append(True)
            publisher.start()
            with get_database().engine.connect() as look:
                wait_until(lambda: not publisher.is_alive()
                           or lock_wait_of(look, *PUBLISH_STATEMENT), 10,
                           message="the publish committed or waits")

    session = get_database().sessionmaker()
    try:
        connection = session.connection()
        event.listen(connection, "after_cursor_execute", after)
        change(session)
        session.commit()
    finally:
        session.close()
        if started:
            publisher.join(timeout=30)
    assert started, "the change never looked the URL up"
    assert published, "the publish failed"
    return published


def test_an_endpoint_created_while_a_callback_url_publish_runs(settings):
    shop = new_partner(settings, "http://127.0.0.1:9/default")
    [published] = _publish_between_check_and_write(
        settings, shop.partner_id,
        lambda session: registered.create(session, settings, shop.partner_id, url=URL))
    with get_database().sessionmaker() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.url == URL))
        assert row is not None and row.registered and row.last_sequence == 1
        assert published.deliveries[0].sequence == 1


def test_the_webhook_url_saved_while_a_callback_url_publish_runs(settings):
    shop = new_partner(settings, "http://127.0.0.1:9/default")
    _publish_between_check_and_write(
        settings, shop.partner_id,
        lambda session: webhook_settings.update_settings(session, settings, shop.partner_id,
                                                         url=URL))
    with get_database().sessionmaker() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.url == URL))
        assert row is not None and row.is_default and row.last_sequence == 1


def test_an_endpoint_moved_to_the_url_while_a_callback_url_publish_runs(settings):
    shop = new_partner(settings, "http://127.0.0.1:9/default")
    with get_database().sessionmaker() as session, session.begin():
        moving = registered.create(session, settings, shop.partner_id,
                                   url="http://127.0.0.1:9/before").public_id

    def move(session: Session) -> None:
        endpoint = registered.get(session, shop.partner_id, moving, for_update=True)
        registered.update_endpoint(session, settings, endpoint, url=URL)

    _publish_between_check_and_write(settings, shop.partner_id, move)
    with get_database().sessionmaker() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.url == URL))
        assert row is not None and row.registered and row.public_id == moving
