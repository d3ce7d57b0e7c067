"""``scripts/audit_report.py``, what ``scripts/test`` reads pip-audit's JSON with: a
known vulnerability fails the run, and an audit that could see no package says so
instead of passing for a clean one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "audit_report.py"


def report(tmp_path: Path, dependencies: list[dict[str, object]]
           ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "audit.json"
    path.write_text(json.dumps({"dependencies": dependencies, "fixes": []}))
    return subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True,
                          text=True, timeout=30)


def test_a_known_vulnerability_fails_and_is_named(tmp_path: Path):
    done = report(tmp_path, [
        {"name": "flask", "version": "3.1.3", "vulns": []},
        {"name": "requests", "version": "2.0.0", "vulns": [
            {"id": "PYSEC-2014-13", "fix_versions": ["2.3.0"], "aliases": []}]},
        {"name": "private-lib", "skip_reason": "Dependency not found on PyPI"},
    ])
    assert done.returncode == 1
    assert "VULNERABLE requests 2.0.0: PYSEC-2014-13 (fixed in 2.3.0)" in done.stdout
    assert "2 of 3 installed packages audited, 1 known vulnerabilities" in done.stdout
    assert "WARNING" not in done.stdout


def test_a_clean_audit_passes(tmp_path: Path):
    done = report(tmp_path, [{"name": "flask", "version": "3.1.3", "vulns": []}])
    assert done.returncode == 0
    assert "1 of 1 installed packages audited, 0 known vulnerabilities" in done.stdout
    assert "WARNING" not in done.stdout


def test_an_audit_that_saw_nothing_says_so(tmp_path: Path):
    done = report(tmp_path, [
        {"name": "flask", "skip_reason": "Dependency not found on PyPI and could not be "
                                         "audited: flask (3.1.3)"},
        {"name": "celery", "skip_reason": "Dependency not found on PyPI and could not be "
                                          "audited: celery (5.7.0)"},
    ])
    assert done.returncode == 0  # not a failure of the project: of the machine's reach
    assert "0 of 2 installed packages audited" in done.stdout
    assert "WARNING: nothing was audited" in done.stdout


def test_no_report_at_all_fails_with_a_message(tmp_path: Path):
    """pip-audit exits before writing its report when it fails itself."""
    path = tmp_path / "audit.json"
    path.write_text("")
    done = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "pip-audit wrote no report" in done.stderr
