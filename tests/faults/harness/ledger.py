"""The end-of-run accounting, with the receiver's log as the witness: published = delivered
+ failed-final + still pending (+ lost, which must be 0); duplicates counted and each
explained by a fault in flight."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.faults.harness.fault_log import FaultLog
    from tests.faults.harness.publisher import Publisher
    from tests.faults.harness.stack import Stack
    from tests.faults.harness.witness import Witness


@dataclass
class Row:
    id: str
    status: str
    next_attempt_at: Any
    held: bool
    attempts: list[tuple[bool, int | None, str | None]]  # (success, status, error kind)


def read_rows(stack: Stack) -> dict[str, Row]:
    rows = {
        r[0]: Row(r[0], r[1], r[2], bool(r[3]), [])
        for r in stack.query("SELECT id, status, next_attempt_at, held FROM notifications")
    }
    for nid, success, status, kind in stack.query(
            "SELECT notification_id, success, response_status, error_payload->>'kind' "
            "FROM attempts ORDER BY started_at, id"):
        if nid in rows:
            rows[nid].attempts.append((bool(success), status, kind))
    return rows


def pending_details(stack: Stack, limit: int = 8) -> list[str]:
    """Why rows are still pending: their bookkeeping and their endpoint's state."""
    details = [
        "pending: " + ", ".join(f"{k}={v}" for k, v in zip(
            ("id", "status", "held", "seq", "lane", "retries", "next", "lease", "scheduled",
             "enqueued", "now"), row, strict=True))
        for row in stack.query(
            "SELECT id, status, held, sequence, lane, retry_attempts, next_attempt_at, "
            "lease_expires_at, scheduled_for, enqueued_at, now() FROM notifications "
            "WHERE next_attempt_at IS NOT NULL OR held ORDER BY sequence LIMIT %s", (limit,))
    ]
    details += [
        "endpoint: " + ", ".join(f"{k}={v}" for k, v in zip(
            ("id", "failing_since", "draining", "failures", "retry_after_until"), row,
            strict=True))
        for row in stack.query(
            "SELECT id, failing_since, draining, consecutive_failures, retry_after_until "
            "FROM endpoints ORDER BY id LIMIT %s", (limit,))
    ]
    return details


@dataclass
class Ledger:
    """The accounting of one run, with the receiver as the witness."""

    scenario: str
    published: int  # acknowledged with 201
    unacknowledged_rows: int  # committed although the producer never got its 201
    delivered: int
    failed_final: int
    pending: int
    lost: int
    duplicates: int
    duplicates_in_flight: int
    duplicates_unexplained: int
    receiver_requests: int
    attempts_recorded: int
    attempts_unrecorded: int  # requests the receiver saw that have no attempt row
    faults: dict[str, int]
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def collect(cls, scenario: str, stack: Stack, witness: Witness, publisher: Publisher,
                faults: FaultLog) -> Ledger:
        total_timeout = stack.setting("DELIVERER_TOTAL_TIMEOUT")
        rows = read_rows(stack)
        answers = witness.answers()
        requests_seen = witness.requests_by_id()
        acknowledged = publisher.acknowledged
        universe = set(acknowledged) | set(rows)
        problems: list[str] = []
        delivered = failed_final = pending = lost = 0
        unrecorded = 0
        for nid in sorted(universe):
            row = rows.get(nid)
            got_2xx = any(a.success for a in answers.get(nid, []))
            seen = requests_seen.get(nid, 0)
            if row is None:
                lost += 1
                problems.append(f"{nid}: acknowledged (201) but no notification row")
                continue
            unrecorded += max(0, seen - len(row.attempts))
            if row.status == "SENT":
                if got_2xx:
                    delivered += 1
                else:
                    lost += 1
                    problems.append(f"{nid}: SENT in the database, never a 2xx at the receiver")
            elif row.next_attempt_at is not None or row.held:
                pending += 1
            elif row.status in ("FAILED", "NOT_SENT") and not got_2xx:
                failed_final += 1
                if len(row.attempts) < seen:
                    problems.append(f"{nid}: {row.status}, {seen} request(s) at the receiver "
                                    f"but {len(row.attempts)} attempt row(s)")
            else:
                lost += 1  # e.g. the merchant got a 2xx, our records say it failed
                problems.append(f"{nid}: final status {row.status}, 2xx at the receiver: "
                                f"{got_2xx}")
        # Duplicates: a webhook-id answered 2xx more than once.
        duplicates = in_flight = unexplained = 0
        for nid, got in answers.items():
            oks = [a for a in got if a.success]
            if len(oks) <= 1:
                continue
            duplicates += 1
            fault = faults.in_flight(oks[0].at, total_timeout)
            if fault is not None:
                in_flight += 1
            else:
                unexplained += 1
                problems.append(f"{nid}: {len(oks)} 2xx answers, first not in flight at any "
                                f"fault")
        if pending:
            problems.extend(pending_details(stack))
        strays = set(requests_seen) - universe
        if strays:
            problems.append(f"{len(strays)} request(s) with a webhook-id never published")
        return cls(
            scenario=scenario,
            extra={"api_exceptions": stack.exceptions("web")},
            published=len(acknowledged),
            unacknowledged_rows=len(set(rows) - set(acknowledged)),
            delivered=delivered,
            failed_final=failed_final,
            pending=pending,
            lost=lost,
            duplicates=duplicates,
            duplicates_in_flight=in_flight,
            duplicates_unexplained=unexplained,
            receiver_requests=sum(requests_seen.values()),
            attempts_recorded=sum(len(r.attempts) for r in rows.values()),
            attempts_unrecorded=unrecorded,
            faults=faults.summary(),
            problems=problems,
        )

    @property
    def balanced(self) -> bool:
        total = self.published + self.unacknowledged_rows
        return total == self.delivered + self.failed_final + self.pending + self.lost

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = self.problems[:30]
        data["balanced"] = self.balanced
        return data

    def summary_line(self) -> str:
        faults = ", ".join(f"{k} x{v}" for k, v in sorted(self.faults.items())) or "none"
        seconds = self.extra.get("duration_s")
        extra_rows = (f" (+{self.unacknowledged_rows} unacknowledged)"
                      if self.unacknowledged_rows else "")
        return (f"{self.scenario}: published {self.published}{extra_rows}"
                f", delivered {self.delivered}, failed-final {self.failed_final}, "
                f"pending {self.pending}, lost {self.lost}, duplicates {self.duplicates} "
                f"({self.duplicates_in_flight} in flight at a fault), faults: {faults}"
                + (f", {seconds:.1f}s" if seconds is not None else ""))

    def explain(self, stack: Stack | None = None) -> str:
        text = json.dumps(self.as_dict(), indent=1, default=str)
        if stack is not None:
            text += "\n" + stack.logs(lines=15)
        return text
