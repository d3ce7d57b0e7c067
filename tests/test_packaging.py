"""What a non-editable install carries: the files setuptools builds into the wheel, and
the distributions the code imports.

The wheel is not built with ``pip wheel``: that needs ``wheel`` (or a newer setuptools)
from an index, and this test stays offline. ``build_py`` is the step of ``bdist_wheel``
that chooses the wheel's files (packages, ``py_modules`` and ``package_data``); the wheel
adds only its metadata to that tree. It is built into a temporary directory, with its
``egg_info`` there too, so the work tree is left as it was.
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"deliverer", "api", "beat_schedule"}


def build_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
         "build_py", "--build-lib", str(lib)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return lib


def install_requires() -> dict[str, Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    requirements = [Requirement(line.strip()) for line in lines
                    if line.strip() and not line.strip().startswith("#")]
    return {canonicalize_name(r.name): r for r in requirements}


def test_built_package_carries_the_migrations(tmp_path):
    lib = build_lib(tmp_path)
    migrations = lib / "deliverer" / "migrations"
    built = {p.relative_to(migrations).as_posix() for p in migrations.rglob("*") if p.is_file()}
    source = ROOT / "deliverer" / "migrations"
    expected = {"env.py", "script.py.mako"} | {
        f"versions/{p.name}" for p in (source / "versions").glob("*.py")}
    assert len(expected) > 3
    assert expected <= built
    assert (lib / "beat_schedule.py").is_file()
    assert (lib / "api" / "templates" / "console" / "base.html").is_file()


def test_release_command_runs_from_the_built_package(tmp_path):
    """The Procfile's ``release: deliverer db upgrade``, importing the built tree only."""
    lib = build_lib(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DELIVERER_", "DATABASE"))}
    env.update(PYTHONPATH=str(lib), DATABASE_URL=f"sqlite:///{tmp_path / 'release.db'}",
               DELIVERER_DATA_DIR=str(tmp_path / "data"))
    # cwd outside the work tree, so only the built copy of deliverer can be imported.
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys, deliverer, deliverer.cli; print(deliverer.__file__, file=sys.stderr); "
         "sys.argv = ['deliverer', 'db', 'upgrade']; deliverer.cli.main()"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert str(lib) in result.stderr


def imported_distributions() -> set[str]:
    modules: set[str] = set()
    files = [ROOT / "beat_schedule.py", *(ROOT / "deliverer").rglob("*.py"),
             *(ROOT / "api").rglob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        # Imports under ``if TYPE_CHECKING:`` are for the type checker, not the runtime.
        typing_only = {id(inner) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                       and node.test.id == "TYPE_CHECKING"
                       for stmt in node.body for inner in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | FIRST_PARTY
    distributions = packages_distributions()
    missing = sorted(m for m in modules if m not in distributions)
    assert not missing, f"imported but not installed: {missing}"
    return {canonicalize_name(d) for m in modules for d in distributions[m]}


def test_every_imported_distribution_is_declared():
    """A distribution installed only as another one's dependency may go away, or come in a
    version the code cannot use, whenever that other one changes its requirements."""
    undeclared = imported_distributions() - set(install_requires())
    assert not undeclared, f"imported but not in install_requires: {sorted(undeclared)}"


def test_urllib3_requirement_excludes_1x():
    # sender.py catches urllib3.exceptions.NameResolutionError, new in urllib3 2.0.
    assert not install_requires()["urllib3"].specifier.contains(Version("1.26.20"))
