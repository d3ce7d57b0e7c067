"""The benchmark's own slice of a shared machine (the processes it starts are
``bench/processes.py``'s).

Other engineers run test suites on the same PostgreSQL and Redis at the same time, so the
suite never stops or reconfigures either server. It takes:

* a PostgreSQL database of its own (``bench_<random>``), migrated with
  ``deliverer db upgrade`` (the Procfile's release step) and dropped at the end;
* a Redis database index of its own, claimed with ``SET NX`` of ``deliverer-bench-session``
  (and of the test suite's ``deliverer-test-session``, so a test session starting meanwhile
  picks another index), flushed at the end;
* a temporary directory for logs, receivers' files and the data dir;
* child processes, each in a process group of its own, stopped by id at the end
  (``processes.Processes``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bench import rabbitmq
from bench.processes import BIN, REPO, BenchError, Processes

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_ADMIN_DB = "postgres"
REDIS_SERVER = "redis://127.0.0.1:6379"
BENCH_KEY = "deliverer-bench-session"
TEST_KEY = "deliverer-test-session"  # tests/conftest.py claims Redis indexes with this key
ADMIN_TOKEN = "bench-" + secrets.token_hex(12)

# Inherited variables that would change what is measured; each benchmark sets its own.
_SCRUB = re.compile(r"^(DELIVERER_|DATABASE_URL$|CELERY_|WORKER_CONCURRENCY$|WEB_CONCURRENCY$"
                    r"|WEB_THREADS$|PORT$|PROMETHEUS_MULTIPROC_DIR$)")


_FLUSH_BUT_MARKERS = """
local n = 0
for _, key in ipairs(redis.call('KEYS', '*')) do
  if key ~= ARGV[1] and key ~= ARGV[2] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


class BenchEnv:
    """A private PostgreSQL database and Redis index, a temp dir and the child processes."""

    def __init__(self, keep: bool = False) -> None:
        import psycopg2
        import redis

        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="deliverer-bench-"))
        self.log_dir = self.tmp / "logs"
        self.log_dir.mkdir()
        self.data_dir = self.tmp / "data"
        self.data_dir.mkdir()
        self.procs = Processes(self.log_dir)
        self.db_name = f"bench_{secrets.token_hex(5)}"
        self._admin = psycopg2.connect(f"{PG_SERVER}/{PG_ADMIN_DB}", connect_timeout=5)
        self._admin.autocommit = True
        with self._admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db_name}"')
        self.database_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db_name}"
        self.redis_db = -1
        self._token = secrets.token_hex(8)
        try:
            self.redis_db = self._claim_redis(redis.Redis)
        except Exception:
            self._drop_database()
            raise
        self.redis_url = f"{REDIS_SERVER}/{self.redis_db}"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.broker_url = self.redis_url
        self.rabbitmq_vhost: str | None = None
        if rabbitmq.chosen():
            self.rabbitmq_vhost, self.broker_url = rabbitmq.create_vhost()
        self._closed = False

    # ---------------------------------------------------------------- claims

    def _claim_redis(self, client_cls: Any) -> int:
        for index in range(1, 16):
            client = client_cls.from_url(f"{REDIS_SERVER}/{index}")
            try:
                if not client.set(BENCH_KEY, self._token, nx=True, ex=4 * 3600):
                    continue
                # Keep test sessions out too (they claim with their own key), and only take
                # an index nobody else uses.
                if client.set(TEST_KEY, "held-by-" + BENCH_KEY, nx=True, ex=4 * 3600) and \
                        client.dbsize() == 2:
                    return index
                # Not ours after all: give back what we set.
                if client.get(TEST_KEY) == ("held-by-" + BENCH_KEY).encode() and \
                        client.get(BENCH_KEY) == self._token.encode():
                    client.delete(TEST_KEY)
                if client.get(BENCH_KEY) == self._token.encode():
                    client.delete(BENCH_KEY)
            finally:
                client.close()
        raise BenchError("no free Redis database index (1..15) for the benchmark")

    def _marks(self) -> None:
        self.redis.set(BENCH_KEY, self._token, ex=4 * 3600)
        self.redis.set(TEST_KEY, "held-by-" + BENCH_KEY, ex=4 * 3600)

    # ---------------------------------------------------------------- environment

    def env(self, **overrides: object) -> dict[str, str]:
        """The environment of every deliverer process: production stack, loopback receivers."""
        env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
        env.update({
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
            "DELIVERER_DATA_DIR": str(self.data_dir),
            "DELIVERER_ALLOW_PRIVATE_URLS": "1",
            "DELIVERER_ADMIN_TOKEN": ADMIN_TOKEN,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        })
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def migrate(self) -> None:
        """``deliverer db upgrade``, as the Procfile's release step runs it."""
        done = subprocess.run([str(BIN / "deliverer"), "db", "upgrade"], env=self.env(),
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"deliverer db upgrade failed:\n{done.stdout}\n{done.stderr}")

    def configure_here(self, env: Mapping[str, str]) -> Any:
        """Point this process's deliverer (publishing, sweeps) at the bench stack."""
        from deliverer.celery_app import make_celery
        from deliverer.config import Settings, set_settings

        settings = Settings.from_env(env)
        set_settings(settings)
        app = make_celery(settings)
        app.set_current()
        app.set_default()
        app.finalize()
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in app.amqp.queues.values():
                queue.bind(channel).declare()
        return settings

    # ---------------------------------------------------------------- state

    def reset(self) -> None:
        """Empty every table and the broker: each benchmark starts from a clean state.
        (Stop the deliverer processes first; receivers such as nginx may stay.)"""
        from sqlalchemy import create_engine, text

        import deliverer.models  # noqa: F401  (registers the tables)
        from deliverer.models import Base

        engine = create_engine(self.database_url)
        try:
            tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            with engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        finally:
            engine.dispose()
        self.flush_redis()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir()

    def flush_redis(self) -> None:
        """Delete every key of our index but the claim markers (no window for a claimer);
        on RabbitMQ, purge the queues too."""
        self.redis.eval(_FLUSH_BUT_MARKERS, 0, BENCH_KEY, TEST_KEY)
        self._marks()
        if self.rabbitmq_vhost is not None:
            from bench import plain_celery

            rabbitmq.purge(self.broker_url, (plain_celery.QUEUE,))

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A plain psycopg2 connection to the bench database (autocommit)."""
        import psycopg2

        conn = psycopg2.connect(f"{PG_SERVER}/{self.db_name}")
        conn.autocommit = True
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    # ---------------------------------------------------------------- teardown

    def _drop_database(self) -> None:
        with contextlib.suppress(Exception), self._admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.procs.stop_all()
        with contextlib.suppress(Exception):
            from deliverer.db import reset_database

            reset_database()
        if not self.keep:
            self._drop_database()
        with contextlib.suppress(Exception):
            self.redis.flushdb()  # also releases the index
        if self.rabbitmq_vhost is not None:
            rabbitmq.delete_vhost(self.rabbitmq_vhost)
        with contextlib.suppress(Exception):
            self._admin.close()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

