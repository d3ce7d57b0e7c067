"""Where a run's figures go: JSON per scenario, and the lines of the session's summary."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.faults.harness.ledger import Ledger


class FaultReport:
    """Figures per scenario, written as JSON after each one (``DELIVERER_FAULT_REPORT``,
    else a file in the temporary directory) and summarised at the end of the session."""

    def __init__(self) -> None:
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        configured = os.environ.get("DELIVERER_FAULT_REPORT")
        self.path = Path(configured) if configured else (
            Path(tempfile.gettempdir()) / f"deliverer-fault-report-{os.getpid()}.json")

    def record(self, ledger: Ledger) -> None:
        self.scenarios[ledger.scenario] = ledger.as_dict()
        self.lines = [line for line in self.lines
                      if not line.startswith(ledger.scenario + ":")]
        self.lines.append(ledger.summary_line())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"scenarios": self.scenarios}, indent=2,
                                        default=str) + "\n")


REPORT = FaultReport()
