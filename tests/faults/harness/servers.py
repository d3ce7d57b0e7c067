"""The throw-away servers a scenario runs on: ``PrivateRedis`` and ``PrivatePostgres``.

``initdb`` and ``pg_ctl`` run as the ``postgres`` OS user when we are root; ``redis-server``
keeps nothing on disk. Both listen on free loopback ports, so a scenario can kill and
restart them without touching the shared servers other test sessions use.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from glob import glob
from pathlib import Path
from typing import Any

import psycopg2
import redis

from tests.faults.harness.logs import log_tail
from tests.support.ports import free_port
from tests.support.tls import self_signed_certificate
from tests.support.waiting import wait_until


class PrivateRedis:
    """A redis-server of our own on a free port; nothing kept on disk. With ``tls``, it
    speaks TLS only, with a certificate for 127.0.0.1 that ``url`` names as the CA to
    verify it with (``rediss://``)."""

    def __init__(self, workdir: Path, tls: bool = False) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.certificate: tuple[Path, Path] | None = None
        if tls:
            self.certificate = self_signed_certificate(self.dir, "redis")
            if self.certificate is None:
                raise RuntimeError("a TLS Redis needs the openssl command")

    @property
    def url(self) -> str:
        if self.certificate:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificate[0]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float) -> redis.Redis:
        tls: dict[str, Any] = {}
        if self.certificate:
            tls = {"ssl": True, "ssl_ca_certs": str(self.certificate[0])}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, **tls)

    def ping(self) -> bool:
        client = self.client(0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def queued_messages(self) -> int:
        """Task messages waiting in deliverer's queues (kombu keeps each queue in a list)."""
        client = self.client(2)
        try:
            return sum(int(client.llen(key)) for key in client.scan_iter("deliver*")
                       if client.type(key) == b"list")
        finally:
            client.close()

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "redis already running"
        self.starts += 1
        self.proc = subprocess.Popen(
            ["redis-server", *self._listen(), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / f"redis-{self.starts}.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.ping(), timeout,
                   message="redis to answer", interval=0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: "
                               f"{log_tail(self.dir / f'redis-{self.starts}.log')}")

    def _listen(self) -> list[str]:
        if self.certificate is None:
            return ["--port", str(self.port)]
        cert, key = self.certificate
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                "--tls-key-file", str(key), "--tls-auth-clients", "no"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _pg_bindir() -> Path:
    candidates = sorted(glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10, check=True)
        return Path(out.stdout.strip())
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found") from exc


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free port (trust auth, loopback only).

    PostgreSQL refuses to run as root, so as root initdb and pg_ctl run as the ``postgres``
    OS user, in a temporary directory it owns (not under pytest's private tmp_path).
    """

    DATABASE = "deliverer"

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="deliverer-faults-pg-"))
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "postgresql.log"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                cwd=self.root, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stdout}\n{result.stderr}\n{log_tail(self.log)}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N",
                  "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        # fsync off only risks data on an OS crash, which we never inject; commits stay
        # synchronous, so a PostgreSQL crash (stop -m immediate) loses no committed row.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off -c max_connections=300")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
                  "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def is_up(self) -> bool:
        try:
            psycopg2.connect(self.url("postgres"), connect_timeout=1).close()
            return True
        except psycopg2.Error:
            return False

    def create_database(self) -> None:
        conn = psycopg2.connect(self.url("postgres"), connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.DATABASE}"')
        finally:
            conn.close()

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        except (RuntimeError, OSError, subprocess.SubprocessError):
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
