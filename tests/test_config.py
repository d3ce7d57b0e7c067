"""Settings read from the environment (``deliverer/config.py``)."""

from __future__ import annotations

import pytest

from deliverer.config import Settings
from deliverer.delivery.ladder import Ladder

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


@pytest.mark.parametrize("given", [
    "postgres://u:p@db.example:5432/app",
    "postgresql://u:p@db.example:5432/app",
])
def test_settings_pick_the_installed_postgresql_driver(tmp_path, given):
    from sqlalchemy import create_engine

    settings = Settings.from_env({"DELIVERER_DATA_DIR": str(tmp_path), "DATABASE_URL": given})
    assert settings.database_url == "postgresql+psycopg2://u:p@db.example:5432/app"
    assert create_engine(settings.database_url).dialect.driver == "psycopg2"

