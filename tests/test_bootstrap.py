"""``scripts/bootstrap --runtime``, what ``scripts/start`` runs first: the package alone,
quietly, and no pip at all once .venv holds it for this setup.py and setup.cfg.

Run on a copy of the files it reads, with a stand-in ``.venv/bin/python`` that records
``-m pip`` instead of running it (and runs everything else with this Python) and a
stand-in ``apt-get`` that records being called: offline, and nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    for name in ("setup.py", "setup.cfg", "scripts/bootstrap"):
        shutil.copy2(ROOT / name, copy / name)
    log = tmp_path / "calls.log"
    bin_dir = copy / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then echo "pip $*" >>'{log}'; exit 0; fi
exec '{sys.executable}' "$@"
""")
    python.chmod(0o755)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt = fake_bin / "apt-get"
    apt.write_text(f"#!/bin/sh\necho \"apt-get $*\" >>'{log}'\nexit 1\n")
    apt.chmod(0o755)
    return copy


def bootstrap(repo: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = repo.parent / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{repo.parent / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}  # the import check finds the code under test
    result = subprocess.run(["bash", str(repo / "scripts" / "bootstrap"), *args], env=env,
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_runtime_installs_the_package_alone_once_quietly(repo: Path):
    first, calls = bootstrap(repo, "--runtime")
    assert first.returncode == 0, first.stderr
    assert [c for c in calls if c.startswith("pip ")] == [
        "pip -m pip install --quiet --disable-pip-version-check -e ."]
    assert not [c for c in calls if c.startswith("apt-get")]  # no chromium, nginx, wrk
    assert first.stdout.splitlines() == [
        "installing deliverer into .venv (quietly; once per change of setup.py or setup.cfg)"]
    assert first.stderr == ""

    again, calls = bootstrap(repo, "--runtime")
    assert again.returncode == 0, again.stderr
    assert calls == [] and again.stdout == "" and again.stderr == ""  # no pip at all

    with (repo / "setup.cfg").open("a") as cfg:
        cfg.write("\n# a dependency changed\n")
    changed, calls = bootstrap(repo, "--runtime")
    assert changed.returncode == 0, changed.stderr
    assert calls == ["pip -m pip install --quiet --disable-pip-version-check -e ."]


def test_an_unknown_mode_is_refused(repo: Path):
    result, calls = bootstrap(repo, "--bogus")
    assert result.returncode == 2 and "usage: scripts/bootstrap [--runtime]" in result.stderr
    assert calls == []
