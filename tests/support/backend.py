"""Which backend the session runs on, and how to make a throwaway database on it.

``embedded``: SQLite + kombu's SQLAlchemy transport; ``production``: PostgreSQL + Redis;
``rabbitmq``: PostgreSQL + RabbitMQ (a vhost of the session's own).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

BACKEND = os.environ.get("DELIVERER_TEST_BACKEND", "embedded").strip().lower()
BACKENDS = ("embedded", "production", "rabbitmq")
# PostgreSQL is the database of both server backends.
ON_POSTGRES = BACKEND in ("production", "rabbitmq")

# The session's settings get the plain URL, through Settings.from_env (which picks the
# driver); URLs handed straight to SQLAlchemy name psycopg2, since SQLAlchemy 2.1 maps a
# bare postgresql:// to psycopg 3 and the project ships psycopg2.
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_SERVER_PSYCOPG2 = "postgresql+psycopg2://postgres@127.0.0.1:5432"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"



def _admin():  # type: ignore[no-untyped-def]
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    return conn


def create_pg_database(prefix: str = "deliverer_test") -> str:
    name = f"{prefix}_{secrets.token_hex(6)}"
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return name


def drop_pg_database(name: str) -> None:
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@contextmanager
def scratch_database_url(tmp_dir: Path) -> Iterator[str]:
    """An empty database of the session's kind, removed afterwards."""
    if ON_POSTGRES:
        name = create_pg_database("deliverer_scratch")
        try:
            yield f"{PG_SERVER_PSYCOPG2}/{name}"
        finally:
            drop_pg_database(name)
    else:
        yield f"sqlite:///{tmp_dir / 'scratch.db'}"


REDIS_SERVER = "redis://127.0.0.1:6379"
REDIS_PREFERRED_DB = 13
_REDIS_CLAIM_KEY = "deliverer-test-session"


def claim_redis_db() -> tuple[str, int]:
    """A Redis database of this session's own, emptied: (url, db).

    Database 13 when free. Sessions running at the same time (two terminals, CI jobs)
    must not share queues: one session's worker would consume, and drop, the other's
    messages. A database is claimed with a key that expires after an hour, so one left
    behind by a killed session frees itself.
    """
    import redis

    token = secrets.token_hex(8)
    candidates = [REDIS_PREFERRED_DB] + [db for db in range(1, 16) if db != REDIS_PREFERRED_DB]
    for db in candidates:
        client = redis.Redis.from_url(f"{REDIS_SERVER}/{db}")
        try:
            if client.set(_REDIS_CLAIM_KEY, token, nx=True, ex=3600):
                for key in client.scan_iter():  # flushdb, but keep our claim
                    if key != _REDIS_CLAIM_KEY.encode():
                        client.delete(key)
                return f"{REDIS_SERVER}/{db}", db
        finally:
            client.close()
    raise RuntimeError("no free Redis database (1-15) for the test session")


def release_redis_db(db: int) -> None:
    import redis

    client = redis.Redis.from_url(f"{REDIS_SERVER}/{db}")
    try:
        client.flushdb()  # also drops the claim
    finally:
        client.close()


RABBITMQ_SERVER = "amqp://guest:guest@127.0.0.1:5672"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                   timeout=60, stdin=subprocess.DEVNULL)


def create_rabbitmq_vhost(prefix: str = "deliverer_test") -> str:
    """A vhost of this session's own on the machine's RabbitMQ: sessions running at the
    same time never share (or purge) each other's queues."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_rabbitmq_vhost(name: str) -> None:
    # A vhost left behind holds nothing another session reads.
    with suppress(OSError, subprocess.SubprocessError):
        _rabbitmqctl("delete_vhost", name)


@contextmanager
def private_broker_url(tmp_dir: Path) -> Iterator[str]:
    """A broker of the session's kind that nothing else consumes from, removed afterwards
    (a worker subprocess of a test must not share the session worker's queues)."""
    if BACKEND == "production":
        url, db = claim_redis_db()
        try:
            yield url
        finally:
            release_redis_db(db)
    elif BACKEND == "rabbitmq":
        vhost = create_rabbitmq_vhost("deliverer_private")
        try:
            yield f"{RABBITMQ_SERVER}/{vhost}"
        finally:
            delete_rabbitmq_vhost(vhost)
    else:
        yield f"sqla+sqlite:///{tmp_dir / 'private-broker.db'}"
