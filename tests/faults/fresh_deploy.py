"""A deploy from nothing: the committed tree cloned, installed, and its Procfile run.

What a platform does and nothing more: ``git clone`` of the commit under test into an
empty folder, an install of the package into an environment of its own, then each
Procfile line through ``bash -c``, exactly as written, with only the environment
variables README.rst names. The clone is mounted read-only for the processes (a read-only
root filesystem on Kubernetes), so nothing can rely on writing next to the code.

The environment reuses the test run's installed dependencies (a ``.pth`` line) instead
of downloading them again; deliverer itself is installed from the clone, not from the
checkout the tests run in.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from tests.faults.harness import ManagedProcess

REPO = Path(__file__).resolve().parents[2]
# Console scripts of dependencies the Procfile calls by name.
_SCRIPTS_OF = ("celery", "gunicorn")


def procfile(root: Path) -> dict[str, str]:
    lines = (root / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def readme_names(name: str) -> bool:
    """Whether README.rst names the environment variable ``name``."""
    text = (REPO / "README.rst").read_text()
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def _run(cmd: list[str], **kwargs: object) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                            stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@dataclass
class Deploy:
    """One deploy: ``app`` (the clone, read-only to the processes), ``env`` (its bin)."""

    root: Path
    env_vars: dict[str, str]
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def bin(self) -> Path:
        return self.root / "env" / "bin"

    def build(self) -> None:
        _run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(self.app)])
        venv.create(self.root / "env", with_pip=False)
        python = str(self.bin / "python")
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], capture_output=True, text=True,
                              check=True).stdout.strip()
        Path(site, "test-run-dependencies.pth").write_text(sysconfig.get_paths()["purelib"])
        _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
              "--no-deps", str(self.app)])
        for dist in _SCRIPTS_OF:
            for entry in metadata.distribution(dist).entry_points:
                if entry.group == "console_scripts":
                    self._script(entry.name, entry.module, entry.attr)

    def _script(self, name: str, module: str, attr: str) -> None:
        path = self.bin / name
        path.write_text(f"#!{self.bin / 'python'}\nimport sys\nfrom {module} import {attr}\n"
                        f"sys.exit({attr}())\n")
        path.chmod(0o755)

    def environment(self) -> dict[str, str]:
        env = {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
               "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
        env.update(self.env_vars)
        return env

    def run(self, role: str, *, read_only: bool = True, serial: int = 0) -> ManagedProcess:
        """The Procfile's ``role`` line, exactly as written, in the app folder."""
        line = procfile(self.app)[role]
        inner = f"cd {shlex.quote(str(self.app))} && exec bash -c {shlex.quote(line)}"
        if read_only:
            app = shlex.quote(str(self.app))
            inner = (f"mount --bind {app} {app} && mount -o remount,bind,ro {app} {app} "
                     f"&& {inner}")
            cmd = ["unshare", "--mount", "--propagation", "private", "bash", "-c", inner]
        else:
            cmd = ["bash", "-c", inner]
        log_path = self.root / f"{role}-{serial}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=self.environment(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        process = ManagedProcess(name=f"{role}-{serial}", role=role, proc=proc,
                                 log_path=log_path)
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> str:
        """A ``deliverer`` command, as an operator types it, in the app folder."""
        result = subprocess.run([str(self.bin / "deliverer"), *args], cwd=self.app,
                                env=self.environment(), capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"deliverer {shlex.join(args)}:\n{result.stderr}"
        return result.stdout

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=5)
