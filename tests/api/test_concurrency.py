"""The limits hold under concurrency: threads against the real threaded server.

Every burst is released together by a barrier, each request on its own connection, so the
server handles them in parallel threads, each with its own database session. On
PostgreSQL the partner row lock serialises the decisions; on SQLite, BEGIN IMMEDIATE.
"""

from __future__ import annotations

from collections import Counter

import pytest

from deliverer.models import NotificationStatus, Trigger
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.race import race
from tests.support.receiver import sleep, status
from tests.support.rows import partner_requests

RETRY = "/api/partner/v2/webhook-notifications/{}/retry"
RESEND = "/api/partner/v2/transactions/{}/resend-webhook"

pytestmark = pytest.mark.usefixtures("worker")


def test_fifty_parallel_retries_of_one_notification_accept_exactly_one(
        make_partner, receiver, slow_ladder):
    # First attempt fails; the manual one is answered slowly, then succeeds.
    receiver.program("/hook", [status(500)], then=sleep(0.5))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)

    responses = race([lambda: partner.api.post(RETRY.format(nid))] * 50)

    assert t.statuses(responses) == Counter({200: 1, 409: 49}), t.statuses(responses)
    for response in responses:
        if response.status_code == 409:
            t.assert_error(response, 409, "CONFLICT", t.NOT_FAILED)
    [winner] = [r.json() for r in responses if r.status_code == 200]
    assert winner["manualRetryCount"] == 1
    h.wait_until(lambda: h.sent(nid), message="SENT after the one manual retry")
    assert h.notification(nid).manual_retry_count == 1
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.MANUAL]
    assert len(receiver.requests("/hook")) == 2  # one first attempt, one manual retry
    rows = partner_requests(partner.partner_id, kind="retry")
    assert Counter(r.outcome for r in rows) == Counter({"ACCEPTED": 1, "CONFLICT": 49})


@pytest.mark.parametrize("endpoints", ["one endpoint", "endpoint each"])
def test_parallel_waves_never_give_a_fourth_manual_retry(
        make_partner, receiver, slow_ladder, api_settings, endpoints):
    """Ten notifications hammered in waves of 50 while each retry fails again.

    Either all to the partner's one failing URL (its retry queue holds all but the
    head), or each to a callback URL of its own.
    """
    partner = make_partner(receiver.always("/down", status(500)))
    nids = [h.publish_and_wait(
                partner.partner_id, NotificationStatus.FAILED,
                callback_url=(receiver.always(f"/down/{i}", status(500))
                              if endpoints == "endpoint each" else None))
            for i in range(10)]
    accepted_by_id: Counter[str] = Counter()
    with api_settings(manual_retry_rate_per_minute=10_000):  # only the per-notification limit
        for _wave in range(6):
            calls = [lambda nid=nids[i % 10]: partner.api.post(RETRY.format(nid))
                     for i in range(50)]
            responses = race(calls)
            assert set(t.statuses(responses)) <= {200, 409}, t.statuses(responses)
            for response in responses:
                if response.status_code == 200:
                    accepted_by_id[response.json()["id"]] += 1
                else:
                    assert t.assert_error(response, 409, "CONFLICT")["message"] in (
                        t.NOT_FAILED, t.MAX_MANUAL)
            # Let the worker fail every accepted retry before the next wave.
            h.wait_until(lambda: all(h.status_is(n, NotificationStatus.FAILED) for n in nids),
                         message="every manual retry attempted")
            if all(h.notification(n).manual_retry_count == 3 for n in nids):
                break
        final = race([lambda nid=nids[i % 10]: partner.api.post(RETRY.format(nid))
                      for i in range(50)])
    for response in final:
        t.assert_error(response, 409, "CONFLICT", t.MAX_MANUAL)
    assert accepted_by_id == Counter({n: 3 for n in nids})
    for nid in nids:
        assert h.notification(nid).manual_retry_count == 3
        assert h.triggers(nid).count(Trigger.MANUAL) == 3
    per_row = Counter(r.notification_id for r in t.accepted(partner.partner_id))
    assert per_row == Counter({n: 3 for n in nids})


def test_fifty_parallel_retries_over_twenty_notifications_accept_exactly_ten(
        make_partner, receiver):
    url = receiver.url("/ok")
    partner = make_partner(url)
    nids = [h.insert_notification(partner.partner_id, url,
                                  status=NotificationStatus.FAILED) for _ in range(20)]

    responses = race([lambda nid=nids[i % 20]: partner.api.post(RETRY.format(nid))
                      for i in range(50)])

    counts = t.statuses(responses)
    assert counts[200] == 10, counts
    assert set(counts) <= {200, 409, 429}, counts
    for response in responses:
        if response.status_code == 429:
            t.assert_error(response, 429, "TOO_MANY_REQUESTS", t.RATE_LIMITED)
            assert 1 <= int(response.headers["Retry-After"]) <= 60
        elif response.status_code == 409:
            t.assert_error(response, 409, "CONFLICT", t.NOT_FAILED)
    winners = [r.json()["id"] for r in responses if r.status_code == 200]
    assert len(set(winners)) == 10
    rows = t.accepted(partner.partner_id)
    assert len(rows) == 10
    assert {r.notification_id for r in rows} == set(winners)
    # Still limited after the burst: no 11th within the minute.
    leftover = next(n for n in nids if n not in winners)
    t.assert_error(partner.api.post(RETRY.format(leftover)), 429, "TOO_MANY_REQUESTS",
                   t.RATE_LIMITED)
    # The ten were really redelivered; the other ten were left alone.
    receiver.wait_for(10, "/ok")
    h.wait_until(lambda: all(h.sent(n) for n in winners), message="ten SENT")
    for nid in nids:
        expected = 1 if nid in winners else 0
        assert h.notification(nid).manual_retry_count == expected
    assert len(receiver.requests("/ok")) == 10


def test_parallel_retries_of_two_partners_are_limited_separately(make_partner, receiver):
    url = receiver.url("/ok")
    partners = [make_partner(url, name=f"P{i}") for i in range(2)]
    nids = {p.partner_id: [h.insert_notification(p.partner_id, url,
                                                 status=NotificationStatus.FAILED)
                           for _ in range(15)]
            for p in partners}
    calls = [lambda p=p, nid=nid: (p.partner_id, p.api.post(RETRY.format(nid)))
             for p in partners for nid in nids[p.partner_id]]
    results = race(calls)
    for partner in partners:
        mine = [r for pid, r in results if pid == partner.partner_id]
        assert t.statuses(mine) == Counter({200: 10, 429: 5}), t.statuses(mine)
        assert len(t.accepted(partner.partner_id)) == 10


def test_parallel_resends_are_rate_limited(make_partner, receiver, api_settings):
    url = receiver.url("/ok")
    partner = make_partner(url)
    h.insert_notification(partner.partner_id, url, status=NotificationStatus.SENT,
                          reference="TXN-PAR")
    with api_settings(resend_wait_seconds=0.1):
        responses = race([lambda: partner.api.post(RESEND.format("TXN-PAR"))] * 30)
    counts = t.statuses(responses)
    assert counts[200] + counts[202] == 10, counts
    assert counts[429] == 20, counts
    for response in responses:
        if response.status_code == 429:
            t.assert_error(response, 429, "TOO_MANY_REQUESTS", t.RATE_LIMITED)
            assert response.headers["Retry-After"].isdigit()
    assert len(t.accepted(partner.partner_id, kind="resend")) == 10
    receiver.wait_for(10, "/ok")
    h.wait_until(lambda: len(partner_requests(partner.partner_id, kind="resend",
                                                delivery_status="SENT")) == 10,
                 message="ten resends delivered")
    assert len(receiver.requests("/ok")) == 10
