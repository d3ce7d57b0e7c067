"""When each fault was injected, and whether a delivery in flight at it may be sent twice."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Fault:
    kind: str
    start: float
    end: float
    # Whether a delivery in flight at this fault may be sent twice (the POST went out,
    # the outcome could not be recorded). Faults that touch no delivery allow none.
    allows_duplicates: bool
    detail: str = ""


class FaultLog:
    def __init__(self) -> None:
        self.faults: list[Fault] = []

    @contextmanager
    def inject(self, kind: str, allows_duplicates: bool = True,
               detail: str = "") -> Iterator[Fault]:
        fault = Fault(kind, time.monotonic(), 0.0, allows_duplicates, detail)
        try:
            yield fault
        finally:
            fault.end = time.monotonic()
            self.faults.append(fault)

    def in_flight(self, arrived: float, total_timeout: float) -> Fault | None:
        """The fault a request that arrived at ``arrived`` was in flight at, if any: it
        arrived before the fault ended and its send could still be running when it began."""
        for fault in self.faults:
            if (fault.allows_duplicates
                    and fault.start - total_timeout - 1.0 <= arrived <= fault.end + 1.0):
                return fault
        return None

    def summary(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.faults))
