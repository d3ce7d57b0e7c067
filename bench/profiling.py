"""py-spy on a running worker: a speedscope profile to look at, and a summary to read.

``py-spy record --nonblocking`` samples without pausing the worker (less overhead, a
little less exact). Three recorders run on the same process:

* every thread, as speedscope JSON (open it in speedscope): where the threads spend
  their time, waiting included (socket reads, database round trips, the pool's queue);
* the same as collapsed ("raw") stacks, summarised as the wall-clock view;
* ``--gil``, only the thread holding the GIL, as collapsed stacks: the CPU the process
  spends in Python, which is what caps a threads-pool worker.

``summarise`` turns collapsed stacks into top functions and a split by package.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.processes import BIN, REPO

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    candidate = BIN / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Recorder:
    def __init__(self, pid: int, out_dir: Path, stem: str, rate: int = 100) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy not installed (pip install -e '.[bench]')")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.speedscope = out_dir / f"{stem}.speedscope.json"
        self.collapsed = out_dir / f"{stem}.gil.collapsed.txt"
        self.wall = out_dir / f"{stem}.all-threads.collapsed.txt"
        self.log = out_dir / f"{stem}.py-spy.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        with self.log.open("wb") as log:
            for fmt, path, extra in (("speedscope", self.speedscope, []),
                                     ("raw", self.wall, []),
                                     ("raw", self.collapsed, ["--gil"])):
                self.procs.append(subprocess.Popen(
                    [binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                     "--rate", str(rate), "--format", fmt, "--output", str(path), *extra],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))

    def stop(self) -> None:
        """SIGINT makes py-spy write its file and exit."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _parse(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"] or ""


def _package(path: str) -> str:
    """py-spy names files relative to their sys.path entry: the first part is the package."""
    path = _short(path)
    top = path.split("/", 1)[0].removesuffix(".py")
    if top in ("deliverer", "api", "bench"):
        parts = path.removesuffix(".py").split("/")
        return ".".join(parts[:2])
    if top in sys.stdlib_module_names:
        return "stdlib:" + top
    return top


def summarise(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Top self and inclusive functions, and self time by package, from collapsed stacks."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    deliverer_incl: Counter[str] = Counter()
    total = 0
    if not collapsed.exists():
        return {"samples": 0}
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_parse(f) for f in stack.split(";")]
        # py-spy puts a "process ..." / "thread ..." pseudo-frame first with some options.
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        func, path = frames[-1]
        self_time[f"{func} ({_short(path)})"] += count
        packages[_package(path)] += count
        seen: set[str] = set()
        for func, path in frames:
            key = f"{func} ({_short(path)})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
                if _short(path).startswith("deliverer/"):
                    deliverer_incl[key] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(top)]

    return {"samples": total, "top_self_pct": pct(self_time),
            "top_inclusive_pct": pct(inclusive), "self_by_package_pct": pct(packages),
            "deliverer_inclusive_pct": pct(deliverer_incl)}


def _short(path: str) -> str:
    for mark in ("site-packages/", f"{REPO}/", "/lib/python3."):
        if mark in path:
            return path.split(mark, 1)[1].split("/", 1)[-1] if mark == "/lib/python3." \
                else path.split(mark, 1)[1]
    return path


def report(recorder: Recorder) -> dict[str, Any]:
    """What goes into the JSON: the files, and both summaries."""
    return {"speedscope": str(recorder.speedscope), "gil_collapsed": str(recorder.collapsed),
            "all_threads_collapsed": str(recorder.wall),
            "gil_summary": summarise(recorder.collapsed),
            "all_threads_summary": summarise(recorder.wall)}


@contextlib.contextmanager
def profiled(enabled: bool, pid: int, out_dir: Path, stem: str
             ) -> Iterator[dict[str, Any]]:
    """py-spy on ``pid`` for the ``with`` block when ``enabled``: the dict it yields is
    filled with ``report`` once the block ends without an error (empty otherwise)."""
    found: dict[str, Any] = {}
    if not enabled:
        yield found
        return
    recorder = Recorder(pid, out_dir, stem)
    try:
        yield found
    finally:
        recorder.stop()
    found.update(report(recorder))
