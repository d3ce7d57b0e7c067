"""CI smoke of the benchmark suite: ``python -m bench --smoke`` runs every benchmark at
tiny sizes and must exit 0 with eight results in its JSON. Nothing is timed or compared to
a target here; it only proves the suite works (production backend only: the suite needs
PostgreSQL and Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = {"throughput", "latency", "publish", "retry", "backlog", "isolation", "api",
              "retention"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("DELIVERER_TEST_BACKEND", "embedded").strip().lower() != "production",
        reason="the benchmark suite runs on the production stack (PostgreSQL + Redis)",
    ),
]


def test_bench_smoke(tmp_path: Path) -> None:
    output = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("DELIVERER_TEST")},
    )
    report = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}"
    assert done.returncode == 0, report
    data = json.loads(output.read_text())
    assert set(data["results"]) == BENCHMARKS, report
    for name, result in data["results"].items():
        assert result["status"] == "ok", f"{name}: {result['error']}\n{report}"
        assert result["rows"], name
        assert all(result["checks"].values()), f"{name}: {result['checks']}"
    assert data["meta"]["mode"] == "smoke"
