"""The machine's processes, read from /proc (no psutil needed): what a test started, and
what is left of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after "pid (comm)": state, ppid, pgrp, ...)
    of every process; no psutil needed."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2:
            yield int(entry), fields


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    return sorted(p for p, fields in _proc_stats() if int(fields[1]) == pid)


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies left out)."""
    return sorted(p for p, fields in _proc_stats() if int(fields[2]) == pgid
                  and fields[0] != "Z")


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (zombies left out): a program started with
    ``start_new_session`` and its children, whatever process groups they made."""
    return sorted(p for p, fields in _proc_stats() if int(fields[3]) == sid
                  and fields[0] != "Z")
