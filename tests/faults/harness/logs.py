"""The end of a server's or a process's log file, for an error message."""

from __future__ import annotations

from pathlib import Path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
