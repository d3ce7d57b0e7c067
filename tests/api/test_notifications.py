"""GET /webhook-notifications (filters, cursor pagination) and GET /webhook-notifications/{id}."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from deliverer.delivery.troubleshooting import FailureKind, hint_for
from deliverer.models import NotificationStatus
from deliverer.retry_ladder import Ladder
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.ports import closed_port
from tests.support.receiver import reset, sleep, status

LIST = "/api/partner/v2/webhook-notifications"
DETAIL = "/api/partner/v2/webhook-notifications/{}"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return quote(moment.isoformat())


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["data"]]


@pytest.fixture
def catalogue(make_partner):
    """A partner with notifications of several statuses, types, references and ages."""
    partner = make_partner("http://127.0.0.1:9/hook")
    url = "http://127.0.0.1:9/hook"
    rows = {}
    specs = [
        ("a", NotificationStatus.FAILED, "transaction.paid", "TXN-1", 0),
        ("b", NotificationStatus.SENT, "transaction.paid", "TXN-2", 1),
        ("c", NotificationStatus.SENT, "invoice.settled", "INV-1", 2),
        ("d", NotificationStatus.PENDING, "transaction.refunded", "TXN-1", 3),
        ("e", NotificationStatus.NOT_SENT, "invoice.settled", "INV-2", 4),
        ("f", NotificationStatus.FAILED, "invoice.settled", "INV-1", 5),
    ]
    for name, state, event_type, reference, hours in specs:
        rows[name] = h.insert_notification(partner.partner_id, url, status=state,
                                           event_type=event_type, reference=reference,
                                           created_at=T0 + timedelta(hours=hours))
    return partner, rows


def test_list_is_newest_first_with_the_notification_fields(catalogue):
    partner, rows = catalogue
    response = partner.api.get(LIST)
    assert ids(response) == [rows[n] for n in "fedcba"]
    body = response.json()
    assert body["nextCursor"] is None
    first = body["data"][0]
    assert set(first) >= {"id", "eventId", "eventType", "reference", "status", "url",
                          "retryAttempts", "manualRetryCount", "attemptCount",
                          "latestErrorPayload", "nextAttemptAt", "cycleStartedAt", "createdAt"}
    assert first["eventType"] == "invoice.settled"
    assert first["reference"] == "INV-1"
    assert first["status"] == "FAILED"


@pytest.mark.parametrize(("query", "expected"), [
    ("status=FAILED", "fa"),
    ("status=SENT", "cb"),
    ("status=PENDING", "d"),
    ("status=NOT_SENT", "e"),
    ("eventType=invoice.settled", "fec"),
    ("eventType=transaction.paid", "ba"),
    ("eventType=nothing.like.this", ""),
    ("reference=TXN-1", "da"),
    ("reference=INV-1", "fc"),
    ("reference=TXN-1&status=FAILED", "a"),
    ("eventType=invoice.settled&status=SENT", "c"),
    ("reference=NOPE", ""),
])
def test_filters(catalogue, query, expected):
    partner, rows = catalogue
    assert ids(partner.api.get(f"{LIST}?{query}")) == [rows[n] for n in expected]


def test_created_range_is_from_inclusive_to_exclusive(catalogue):
    partner, rows = catalogue
    frm, to = T0 + timedelta(hours=1), T0 + timedelta(hours=4)
    response = partner.api.get(f"{LIST}?createdFrom={iso(frm)}&createdTo={iso(to)}")
    assert ids(response) == [rows[n] for n in "dcb"]
    assert ids(partner.api.get(f"{LIST}?createdFrom={iso(T0 + timedelta(hours=5))}")) == [
        rows["f"]]
    assert ids(partner.api.get(f"{LIST}?createdTo={iso(T0 + timedelta(minutes=1))}")) == [
        rows["a"]]
    # Any offset is understood: 14:00+02:00 is 12:00 UTC.
    shifted = quote("2025-03-01T16:00:00+02:00")  # 14:00 UTC
    assert ids(partner.api.get(f"{LIST}?createdFrom={shifted}")) == [rows[n] for n in "fedc"]
    # A range that holds nothing; one that ends before it starts is the query's mistake.
    assert ids(partner.api.get(f"{LIST}?createdFrom={iso(to)}&createdTo={iso(to)}")) == []
    t.assert_error(partner.api.get(f"{LIST}?createdFrom={iso(to)}&createdTo={iso(frm)}"),
                   400, "BAD_REQUEST",
                   "Invalid request: createdFrom: must not be later than createdTo")


def test_a_mistyped_filter_is_refused_not_ignored(catalogue):
    # Ignored, "statuss=FAILED" listed every notification as if filtered (merchant try).
    partner, rows = catalogue
    for query, name in (("statuss=FAILED", "statuss"), ("event_type=x", "event_type"),
                        ("limit=2&createdFrom=x&page=2", "page")):
        response = partner.api.get(f"{LIST}?{query}")
        assert response.status_code == 400, response.text
        assert f"{name}: Unknown query parameter." in response.json()["message"]
    response = partner.api.get("/api/partner/v2/webhook-alerts?limt=5")
    t.assert_error(response, 400, "BAD_REQUEST", "Invalid request: limt: Unknown query parameter.")
    assert rows["a"] in ids(partner.api.get(f"{LIST}?status=FAILED&limit=100"))


def walk(client, query: str, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    for _ in range(100):  # bounded
        url = f"{LIST}?limit={limit}" + (f"&{query}" if query else "")
        if cursor:
            url += f"&cursor={quote(cursor)}"
        response = client.get(url)
        pages.append(ids(response))
        cursor = response.json()["nextCursor"]
        if cursor is None:
            return pages
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("limit", [1, 7, 20, 100])
def test_cursor_pagination_walks_everything_once(make_partner, limit):
    partner = make_partner()
    url = "http://127.0.0.1:9/hook"
    expected = []
    # 45 notifications, with runs of identical created_at to exercise the id tie-break.
    for i in range(45):
        created = T0 + timedelta(seconds=i // 4)
        expected.append((created, h.insert_notification(partner.partner_id, url,
                                                        status=NotificationStatus.FAILED,
                                                        created_at=created)))
    expected.sort(key=lambda pair: (pair[0], pair[1]), reverse=True)
    pages = walk(partner.api, "", limit)
    flat = [nid for page in pages for nid in page]
    assert flat == [nid for _, nid in expected]  # newest first, no duplicates, none missing
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit
    assert len(pages) == -(-45 // limit)


def test_pagination_with_a_filter(make_partner):
    partner = make_partner()
    url = "http://127.0.0.1:9/hook"
    failed = set()
    for i in range(30):
        state = NotificationStatus.FAILED if i % 3 == 0 else NotificationStatus.SENT
        nid = h.insert_notification(partner.partner_id, url, status=state,
                                    created_at=T0 + timedelta(minutes=i))
        if state == NotificationStatus.FAILED:
            failed.add(nid)
    flat = [nid for page in walk(partner.api, "status=FAILED", 3) for nid in page]
    assert len(flat) == len(set(flat)) == 10
    assert set(flat) == failed


def test_pagination_sees_rows_written_meanwhile_only_before_the_cursor(make_partner):
    partner = make_partner()
    url = "http://127.0.0.1:9/hook"
    old = [h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED,
                                 created_at=T0 + timedelta(minutes=i))
           for i in range(6)]
    first = partner.api.get(f"{LIST}?limit=3")
    assert ids(first) == old[::-1][:3]
    h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED,
                          created_at=T0 + timedelta(hours=1))  # newer
    cursor = first.json()["nextCursor"]
    assert ids(partner.api.get(f"{LIST}?limit=3&cursor={quote(cursor)}")) == old[::-1][3:]


@pytest.mark.parametrize("query", [
    "status=BOGUS",
    "status=failed",
    "limit=0",
    "limit=101",
    "limit=-1",
    "limit=abc",
    "limit=1.5",
    "createdFrom=yesterday",
    "createdFrom=2025-03-01",
    "createdFrom=2025-03-01T12:00:00",  # no offset: ambiguous
    "createdTo=2025-13-01T00:00:00Z",
    "createdTo=0001-01-01T00:00:00%2B14:00",  # before year 1 in UTC
    "createdFrom=9999-12-31T23:59:59-05:00",  # after year 9999 in UTC
    "cursor=garbage",
    "cursor=" + base64.urlsafe_b64encode(b"not|a-cursor").decode(),
    "cursor=" + base64.urlsafe_b64encode(b"2025-01-01T00:00:00|" + b"0" * 36).decode(),
    "cursor=" + base64.urlsafe_b64encode(
        b"0001-01-01T00:00:00+14:00|8374f327-38bd-4b0b-b8a7-2524599eb903").decode(),
    "cursor=" + "x" * 201,
    "eventType=" + "x" * 101,
    "reference=" + "x" * 201,
])
def test_bad_filter_values_are_400(make_partner, query):
    partner = make_partner()
    h.insert_notification(partner.partner_id, "http://127.0.0.1:9/hook",
                          status=NotificationStatus.FAILED)
    response = partner.api.get(f"{LIST}?{query}")
    t.assert_error(response, 400, "BAD_REQUEST")


def test_list_shows_only_own_notifications(make_partner):
    mine = make_partner(name="Mine")
    theirs = make_partner(name="Theirs")
    url = "http://127.0.0.1:9/hook"
    own = {h.insert_notification(mine.partner_id, url, status=NotificationStatus.FAILED,
                                 reference="TXN-SHARED") for _ in range(3)}
    for _ in range(4):
        h.insert_notification(theirs.partner_id, url, status=NotificationStatus.FAILED,
                              reference="TXN-SHARED")
    assert set(ids(mine.api.get(LIST))) == own
    assert set(ids(mine.api.get(f"{LIST}?reference=TXN-SHARED"))) == own
    assert len(ids(theirs.api.get(LIST))) == 4


# --------------------------------------------------------------------------- detail


def test_detail_lists_attempts_newest_first_with_error_and_hint(
        make_partner, receiver, worker, override_settings):
    """Seed 003's common errors (401, 404, 422, 429/499, 500) and a reset, then delivered."""
    script = [status(500), status(401), status(404), status(422), status(429), status(499),
              reset()]
    url = receiver.program("/hook", script, then=status(200))
    partner = make_partner(url)
    with override_settings(ladder=Ladder.parse("30;repeat=30")):  # 30 ms apart, scaled
        nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, timeout=30)
    response = partner.api.get(DETAIL.format(nid))
    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["status"] == "SENT"
    assert detail["attemptCount"] == 8
    assert detail["payload"] == {"amount": 1000}
    attempts = detail["attempts"]
    assert len(attempts) == 8
    started = [a["startedAt"] for a in attempts]
    assert started == sorted(started, reverse=True)
    newest, *failures = attempts
    assert newest["success"] is True
    assert newest["responseStatus"] == 200
    assert newest["errorPayload"] is None
    for attempt in attempts:
        assert attempt["trigger"] == "automatic"
        assert attempt["url"] == url
        assert isinstance(attempt["durationMs"], int)
    expected = [(FailureKind.CONNECTION_RESET, None), (FailureKind.HTTP_STATUS, 499),
                (FailureKind.HTTP_STATUS, 429), (FailureKind.HTTP_STATUS, 422),
                (FailureKind.HTTP_STATUS, 404), (FailureKind.HTTP_STATUS, 401),
                (FailureKind.HTTP_STATUS, 500)]
    for attempt, (kind, http_status) in zip(failures, expected, strict=True):
        assert attempt["success"] is False
        error = attempt["errorPayload"]
        assert set(error) >= {"kind", "message", "httpStatus", "hint"}
        assert error["kind"] == kind, attempt
        assert error["httpStatus"] == http_status, attempt
        assert error["message"]
        assert error["hint"] == hint_for(kind, http_status)
    hints = {a["errorPayload"]["httpStatus"]: a["errorPayload"]["hint"] for a in failures}
    assert "invalid credentials" in hints[401]
    assert "Not found" in hints[404]
    assert "Unprocessable" in hints[422]
    assert "rate limiting" in hints[429] and "rate limiting" in hints[499]
    assert "Internal server error" in hints[500]


@pytest.mark.parametrize(("kind", "make_url", "behaviour"), [
    (FailureKind.CONNECTION_REFUSED, lambda r: f"http://127.0.0.1:{closed_port()}/hook", None),
    (FailureKind.TIMEOUT, lambda r: r.url("/slow"), sleep(5)),
    (FailureKind.TLS, lambda r: r.url("/plain", scheme="https"), None),
])
def test_detail_hints_for_network_failures(make_partner, receiver, worker, slow_ladder,
                                           kind, make_url, behaviour):
    if behaviour is not None:
        receiver.always("/slow", behaviour)
    url = make_url(receiver)
    partner = make_partner(url)
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    detail = partner.api.get(DETAIL.format(nid)).json()
    [attempt] = detail["attempts"]
    assert attempt["errorPayload"]["kind"] == kind
    assert attempt["errorPayload"]["hint"] == hint_for(kind)
    assert detail["latestErrorPayload"] == attempt["errorPayload"]


def test_detail_of_unknown_malformed_or_foreign_id_is_404(make_partner):
    mine = make_partner(name="Mine")
    theirs = make_partner(name="Theirs")
    foreign = h.insert_notification(theirs.partner_id, "http://127.0.0.1:9/hook",
                                    status=NotificationStatus.FAILED)
    for bad in ("8374f327-38bd-4b0b-b8a7-2524599eb903", "nope", "1", foreign,
                foreign.upper(), foreign.replace("-", "")):
        t.assert_error(mine.api.get(DETAIL.format(bad)), 404, "NOT_FOUND", t.NOT_FOUND)
    assert theirs.api.get(DETAIL.format(foreign)).status_code == 200
