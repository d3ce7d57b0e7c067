"""Every CLI example in README.rst runs as written, on a fresh machine's default.

The examples are taken from README.rst itself: each literal block made of ``deliverer``
commands is run, as one bash script with ``set -euo pipefail``, in an empty folder with no
deliverer variable set (the embedded default: SQLite and the SQLAlchemy broker under
``.data/``, created by the commands themselves).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # no shared server: runs once, in the embedded pass

README = Path(__file__).resolve().parent.parent / "README.rst"


def literal_blocks(text: str) -> list[list[str]]:
    """The lines of each ``::`` literal block, dedented, blank lines dropped."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if not lines[i].rstrip().endswith("::"):
            i += 1
            continue
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            if lines[i].strip():
                block.append(lines[i].strip())
            i += 1
        blocks.append(block)
    return blocks


def cli_examples() -> list[list[str]]:
    def is_cli(line: str) -> bool:
        return line.startswith(("deliverer ", 'eval "$(deliverer '))

    return [b for b in literal_blocks(README.read_text()) if b and all(map(is_cli, b))]


def test_readme_has_the_cli_examples():
    commands = [line for block in cli_examples() for line in block]
    assert any("partner create" in c for c in commands), commands
    assert any(c.startswith("deliverer publish") for c in commands), commands


@pytest.mark.parametrize("block", cli_examples(), ids=lambda b: b[0][:40])
def test_readme_cli_example_runs_as_written(tmp_path, block):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    script = "set -euo pipefail\n" + "\n".join(f"echo '+ {line.replace(chr(39), '')}'\n{line}"
                                               for line in block)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert (tmp_path / ".data").is_dir()  # the embedded default made its own folder
