"""Settings read from the environment (``deliverer/config.py``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from deliverer.config import ConfigError, Settings
from deliverer.retry_ladder import Ladder

pytestmark = pytest.mark.unit


def test_settings_read_ladder_and_time_scale_from_env(tmp_path):
    settings = Settings.from_env({
        "DELIVERER_DATA_DIR": str(tmp_path),
        "DELIVERER_RETRY_LADDER": "10,20;repeat=30;max_age=100",
        "DELIVERER_TIME_SCALE": "0.5",
    })
    assert settings.ladder == Ladder(steps=(10.0, 20.0), repeat=30.0, max_age=100.0)
    assert settings.time_scale == 0.5
    with pytest.raises(ValueError):
        Settings.from_env({"DELIVERER_DATA_DIR": str(tmp_path), "DELIVERER_TIME_SCALE": "0"})


def test_a_lease_must_outlast_a_post(tmp_path):
    """Otherwise a POST still in flight could see its row claimed and POSTed again."""
    base = {"DELIVERER_DATA_DIR": str(tmp_path), "DELIVERER_TOTAL_TIMEOUT": "15",
            "DELIVERER_CONNECT_TIMEOUT": "5"}
    with pytest.raises(ValueError, match="DELIVERER_LEASE_SECONDS"):
        Settings.from_env({**base, "DELIVERER_LEASE_SECONDS": "20"})
    assert Settings.from_env({**base, "DELIVERER_LEASE_SECONDS": "21"}).lease_seconds == 21


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DELIVERER_TIME_SCALE", "abc", "must be a number"),
    ("DELIVERER_RETRY_LADDER", ";", "no delays given"),
    ("DELIVERER_RETRY_LADDER", "60,120;repat=600", "options are repeat= and max_age="),
    ("DELIVERER_RETRY_LADDER", "60,-1", "must be positive"),
    ("DELIVERER_PORTAL_URL", "hooks.example.com", "http(s) address"),
    ("DELIVERER_PORTAL_URL", "https://hooks.example.com/?x=1", "http(s) address"),
    ("DELIVERER_ADMIN_TOKEN", "admin", "must be at least 16 characters"),
    ("DELIVERER_ATTEMPT_RETENTION_DAYS", "0", "must be at least 1"),
    ("DELIVERER_ATTEMPT_RETENTION_DAYS", "0.5", "must be at least 1"),
])
def test_a_setting_that_cannot_be_used_is_named(tmp_path, name, value, says):
    # The CLI says a ConfigError in one line (tests/operations/test_cli.py); it names the
    # variable.
    with pytest.raises(ConfigError, match=re.escape(says)) as raised:
        Settings.from_env({"DELIVERER_DATA_DIR": str(tmp_path), name: value})
    assert str(raised.value).startswith(name)


def test_the_portal_url_loses_its_trailing_slash(tmp_path):
    assert Settings.from_env({"DELIVERER_DATA_DIR": str(tmp_path),
                              "DELIVERER_PORTAL_URL": "https://hooks.example.com/p/"}
                             ).portal_base_url == "https://hooks.example.com/p"


@pytest.mark.parametrize("given", [
    "postgres://u:p@db.example:5432/app",
    "postgresql://u:p@db.example:5432/app",
])
def test_settings_pick_the_installed_postgresql_driver(tmp_path, given):
    from sqlalchemy import create_engine

    settings = Settings.from_env({"DELIVERER_DATA_DIR": str(tmp_path), "DATABASE_URL": given})
    assert settings.database_url == "postgresql+psycopg2://u:p@db.example:5432/app"
    assert create_engine(settings.database_url).dialect.driver == "psycopg2"


# ------------------------------------------------------------------ README's tables

REPO = Path(__file__).resolve().parents[1]


def _readme_tables(section: str) -> list[set[str]]:
    """The names in the first column of each simple table of a README section."""
    text = (REPO / "README.rst").read_text()
    match = re.search(rf"^{section}\n=+\n(.*?)(?=^[^\n]+\n=+\n|\Z)", text, re.M | re.S)
    assert match, f"README.rst has no {section} section"
    tables: list[set[str]] = []
    inside = False
    for line in match.group(1).splitlines():
        if re.fullmatch(r"=+( +=+)+", line):
            inside = not inside
            if inside:
                tables.append(set())
        elif inside and (name := re.match(r"``([A-Z][A-Z0-9_]*)``", line)):
            tables[-1].add(name.group(1))
    return tables


def _names_config_reads() -> set[str]:
    """Every variable ``deliverer/config.py`` reads from its environment mapping: the
    ``env.get(NAME)`` and ``env[NAME]`` of ``Settings.from_env``, and the names it hands
    to its readers with the mapping (``_float(env, NAME, ...)``)."""
    tree = ast.parse((REPO / "deliverer" / "config.py").read_text())
    names: set[str] = set()

    def is_env(node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id == "env"

    def strings(*nodes: ast.expr) -> set[str]:  # a name in a variable comes from a caller
        return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_env(node.value):
            names |= strings(node.slice)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "get" and is_env(func.value):
                names |= strings(*node.args[:1])
            elif any(is_env(arg) for arg in node.args):
                names |= strings(*node.args)
    return names


def _names_the_processes_read() -> set[str]:
    """The variables the Procfile's lines expand, and those the CLI's options read
    (click's ``envvar=``)."""
    names = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", (REPO / "Procfile").read_text()))
    for path in (REPO / "deliverer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "envvar":
                names.add(ast.literal_eval(node.value))
    return names


def test_the_readme_lists_every_variable_config_reads():
    settings_table, *_ = _readme_tables("Configuration")
    reads = _names_config_reads()
    assert "DATABASE_URL" in reads and "DELIVERER_SLOW_WINDOW" in reads  # the parse works
    assert settings_table == reads, (
        f"missing from README's table: {sorted(reads - settings_table)}; "
        f"listed but not read: {sorted(settings_table - reads)}")


def test_the_readme_lists_every_variable_the_processes_read():
    _, processes_table = _readme_tables("Configuration")
    reads = _names_the_processes_read()
    assert "PORT" in reads  # the parse works
    assert processes_table == reads, (
        f"missing from README's table: {sorted(reads - processes_table)}; "
        f"listed but not read: {sorted(processes_table - reads)}")
