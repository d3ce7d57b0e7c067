"""How a scenario runs deliverer as operators do: the ``Stack`` (environment, ``deliverer db
upgrade``, gunicorn serving the API, Celery workers and beats, every process in its own
process group) on a private PostgreSQL and broker, and what it reads back from them.

``running_stack`` is the ``stack`` fixture: servers up, schema migrated, and everything torn
down whatever happens (``Stack.close``).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import requests

from tests.faults.harness.processes import ManagedProcess
from tests.faults.harness.servers import PrivatePostgres, PrivateRedis
from tests.support.backend import BACKEND
from tests.support.ports import free_port
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from tests.faults.harness.publisher import Publisher


REPO = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "faults-" + secrets.token_hex(12)
REQUEST_TIMEOUT = 10.0  # a producer's HTTP timeout: an API call longer than this "hangs"
# The last line of a logged traceback: "psycopg2.errors.DeadlockDetected: deadlock ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Detected|Failure)\b: ")

# Loopback timings shared by every scenario (seconds, except the time scale).
BASE_ENV: dict[str, str] = {
    "DELIVERER_TIME_SCALE": "0.001",  # 2 minutes -> 120 ms
    "DELIVERER_ALLOW_PRIVATE_URLS": "1",
    "DELIVERER_SWEEP_INTERVAL": "0.5",
    "DELIVERER_SWEEP_HORIZON": "5",
    "DELIVERER_LOST_MESSAGE_GRACE": "3",
    "DELIVERER_CONNECT_TIMEOUT": "1",
    "DELIVERER_TOTAL_TIMEOUT": "2",
    "DELIVERER_LEASE_SECONDS": "4",  # above connect + total timeout, so no lease overrun
    "DELIVERER_DRAIN_RATE": "100",
}


@dataclass
class Stack:
    """The production stack on private servers, and the deliverer processes on it."""

    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    broker_tls: bool = False  # Redis over TLS (rediss://)
    # The broker of the pass: a private Redis, or a private RabbitMQ node in the
    # RabbitMQ pass (DELIVERER_TEST_BACKEND=rabbitmq; tests.faults.rabbitmq_node).
    broker: Any = field(init=False)
    pg: PrivatePostgres = field(init=False)
    processes: list[ManagedProcess] = field(default_factory=list)
    publishers: list[Publisher] = field(default_factory=list)
    api_port: int = 0
    _serial: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        if BACKEND == "rabbitmq":
            from tests.faults.rabbitmq_node import PrivateRabbitMQ  # it imports this module

            self.broker = PrivateRabbitMQ()
        else:
            self.broker = PrivateRedis(self.workdir, tls=self.broker_tls)
        self.pg = PrivatePostgres()

    # ------------------------------------------------------------ life cycle

    def start_servers(self) -> None:
        self.pg.init()
        self.pg.start()
        self.pg.create_database()
        self.broker.start()
        self.migrate()

    def close(self) -> None:
        """Stop every process and both servers; safe to call after any failure."""
        for publisher in self.publishers:
            publisher.stop()
        # All at once: SIGTERM everywhere (resumed, should one be paused), a short grace,
        # then SIGKILL every group.
        for process in self.processes:
            with suppress(Exception):  # teardown goes on whatever happens
                if process.alive():
                    process._signal_group(signal.SIGTERM)
                    process.resume()
        deadline = time.monotonic() + 3.0
        for process in self.processes:
            with suppress(Exception):
                process.proc.wait(max(0.01, deadline - time.monotonic()))
        for process in self.processes:
            with suppress(Exception):
                process.stop(timeout=0)
        try:
            if BACKEND == "rabbitmq":
                self.broker.destroy()
            else:
                self.broker.stop(signal.SIGKILL)
        finally:
            self.pg.destroy()

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DELIVERER_", "CELERY_", "PROMETHEUS_"))
               and k not in ("DATABASE_URL", "PORT")}
        env.update(BASE_ENV)
        env.update({
            "DATABASE_URL": self.pg.url(),
            "CELERY_BROKER_URL": self.broker.url,
            "DELIVERER_DATA_DIR": str(self.workdir / "data"),
            "DELIVERER_ADMIN_TOKEN": ADMIN_TOKEN,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        env.update(self.extra_env)
        return env

    def setting(self, name: str) -> float:
        return float(self.env[name])

    def migrate(self) -> None:
        script = Path(sys.executable).with_name("deliverer")
        cmd = ([str(script)] if script.exists()
               else [sys.executable, "-c", "from deliverer.cli import main; main()"])
        result = subprocess.run([*cmd, "db", "upgrade"], env=self.env, cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"deliverer db upgrade failed: {result.stdout}{result.stderr}")

    def spawn(self, role: str, args: Sequence[str], name: str | None = None) -> ManagedProcess:
        self._serial[role] += 1
        name = name or f"{role}{self._serial[role]}"
        log_path = self.workdir / "logs" / f"{name}-{self._serial[role]}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, *args], env=self.env, cwd=REPO,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        process = ManagedProcess(name=name, role=role, proc=proc, log_path=log_path)
        self.processes.append(process)
        return process

    # ------------------------------------------------------------ the Procfile's processes

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_api(self, workers: int = 2, timeout: float = 30.0) -> ManagedProcess:
        self.api_port = free_port()
        web = self.spawn("web", ["-m", "gunicorn", "--bind", f"127.0.0.1:{self.api_port}",
                                 "--workers", str(workers), "--timeout", "30",
                                 "--graceful-timeout", "2", "--no-control-socket",
                                 "api:create_app()"])

        def up() -> bool:
            if not web.alive():
                raise RuntimeError(f"gunicorn exited:\n{web.tail()}")
            try:
                return requests.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout, message="the API to answer /healthz", interval=0.1)
        return web

    def start_worker(self, name: str, pool: str = "threads", concurrency: int = 8,
                     wait: bool = True, timeout: float = 30.0) -> ManagedProcess:
        queues = "deliver.first,deliver.retry,deliver.manual,deliverer.maintenance"
        worker = self.spawn("worker", [
            "-m", "celery", "-A", "deliverer.worker", "worker", "--pool", pool,
            "--concurrency", str(concurrency), "-Q", queues, "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ], name=name)
        if wait:
            self.wait_ready(worker, timeout=timeout)
        return worker

    def start_beat(self, name: str, wait: bool = True, timeout: float = 30.0) -> ManagedProcess:
        """A beat, as the Procfile starts it: no schedule file (beat keeps no state)."""
        beat = self.spawn("beat", [
            "-m", "celery", "-A", "deliverer.worker", "beat", "--loglevel", "INFO",
        ], name=name)
        if wait:
            self.wait_ready(beat, timeout=timeout)
        return beat

    def start_pipeline(self, webhook_url: str, concurrency: int = 8
                       ) -> tuple[ManagedProcess, ManagedProcess, ManagedProcess, str]:
        """A threads worker ("threads"), beat and the API, started together, and a
        partner sending to ``webhook_url``: (worker, beat, web, partner id), once the
        worker and beat are ready."""
        worker = self.start_worker("threads", pool="threads", concurrency=concurrency,
                                   wait=False)
        beat = self.start_beat("beat", wait=False)
        web = self.start_api()
        partner = self.create_partner(webhook_url)
        self.wait_ready(worker, beat)
        return worker, beat, web, partner

    def wait_ready(self, *processes: ManagedProcess, timeout: float = 30.0) -> None:
        """Workers until they say ``ready.``, beats until they sent their first sweep."""
        marks = {"worker": " ready.", "beat": "Sending due task"}

        def ready() -> bool:
            for process in processes:
                if not process.alive():
                    raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
            return all(marks[p.role] in p.log() for p in processes if p.role in marks)

        wait_until(ready, timeout, interval=0.1,
                   message="processes to be ready: " + ", ".join(p.name for p in processes))

    def exceptions(self, role: str = "web") -> dict[str, int]:
        """The exceptions these processes logged, by their summary line (why a 5xx)."""
        found: Counter[str] = Counter()
        for process in self.processes:
            if process.role != role:
                continue
            for line in process.log().splitlines():
                if EXCEPTION_LINE.match(line):
                    found[line[:160]] += 1
        return dict(found)

    def logs(self, role: str | None = None, lines: int = 25) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}, alive={p.alive()})\n{p.tail(lines)}"
                         for p in self.processes if role is None or p.role == role)

    # ------------------------------------------------------------ setting up and reading back

    def create_partner(self, webhook_url: str, name: str = "Faults Inc") -> str:
        response = requests.post(f"{self.api_url}/internal/v1/partners",
                                 json={"name": name, "webhookUrl": webhook_url},
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                 timeout=REQUEST_TIMEOUT)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(self.pg.url(), connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def live_count(self) -> int:
        """Notifications with an attempt still ahead (due, leased, or held)."""
        rows = self.query("SELECT count(*) FROM notifications "
                          "WHERE next_attempt_at IS NOT NULL OR held")
        return int(rows[0][0])

    def settle(self, timeout: float, quiet: float = 1.0) -> float:
        """Wait until nothing is left to deliver, then ``quiet`` more seconds (a late
        duplicate would show up then). Returns the seconds waited."""
        start = time.monotonic()
        try:
            wait_until(lambda: self.live_count() == 0, timeout,
                       message="every notification to settle", interval=0.25)
        except AssertionError:
            return time.monotonic() - start  # the ledger reports what is still pending
        time.sleep(quiet)
        return time.monotonic() - start


@contextmanager
def running_stack(workdir: Path, broker_tls: bool = False,
                  **extra_env: str) -> Iterator[Stack]:
    """A started ``Stack`` (servers up, schema migrated), torn down whatever happens."""
    stack = Stack(workdir, dict(extra_env), broker_tls=broker_tls)
    try:
        stack.start_servers()
        yield stack
    finally:
        stack.close()
