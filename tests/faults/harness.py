"""Fault-injection harness: the production stack on private servers, a witness, a ledger.

Every scenario runs deliverer as operators do (the Procfile's processes as real
subprocesses) on its *own* PostgreSQL and Redis, started here on free loopback ports in a
temporary directory, so they can be killed and restarted without touching the shared
servers other test sessions use:

* ``PrivatePostgres`` / ``PrivateRedis``: throw-away servers (``initdb`` + ``pg_ctl`` run
  as the ``postgres`` OS user when we are root; ``redis-server`` without persistence).
* ``Stack``: the environment, ``deliverer db upgrade``, gunicorn serving the API, Celery
  workers (threads or prefork) and beats; every process in its own process group, so a
  ``kill -9`` or the final teardown reaches its children too.
* ``Witness``: wraps the test receiver (``tests.support.receiver``): every request is
  answered by a *plan* keyed on its ``webhook-id`` and attempt number (deterministic for a
  seed, whatever the order of arrival), and each answer is remembered (2xx or not).
* ``Publisher``: the producer, over ``POST /internal/v1/events``, at a fixed rate, retrying
  what the API did not acknowledge, and timing every call.
* ``FaultLog`` and ``Ledger``: when each fault was injected, and the end-of-run accounting:
  published = delivered + failed-final + still pending (+ lost, which must be 0), with the
  receiver's log as the witness; duplicates counted and each explained by a fault in flight.

Everything is bounded in time: servers and processes are awaited with deadlines, HTTP
calls have timeouts, and ``Stack.close`` tears everything down even after a failure.
A scenario, in short (the ``stack`` fixture is ``with running_stack(tmp_path) as
stack``: private PostgreSQL + Redis, migrated; ``receiver`` and ``faults`` are fixtures
too)::

    witness = Witness(receiver, steady(0.1))     # or flaky(seed), chaos(seed, timeout)
    worker = stack.start_worker("w1", wait=False)
    stack.start_api()
    publisher = Publisher(stack, stack.create_partner(witness.url("/hook")))
    publisher.start(count=300, rate=30)
    with faults.inject("kill -9 worker"):
        worker.kill9()
    publisher.join(timeout=30)
    stack.settle(timeout=60)
    ledger = Ledger.collect("my scenario", stack, witness, publisher, faults)
    REPORT.record(ledger)                         # JSON: $DELIVERER_FAULT_REPORT
    assert ledger.lost == 0 and ledger.duplicates_unexplained == 0
"""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

import psycopg2
import redis
import requests

from tests.support import receiver as rcv
from tests.support.backend import BACKEND
from tests.support.ports import free_port
from tests.support.processes import child_pids
from tests.support.receiver import Receiver
from tests.support.tls import self_signed_certificate
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
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


# --------------------------------------------------------------------------- small tools


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- servers


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
                               f"{_tail(self.dir / f'redis-{self.starts}.log')}")

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
                               f"{result.stdout}\n{result.stderr}\n{_tail(self.log)}")

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


# --------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    """A deliverer process (gunicorn, worker, beat) in its own process group."""

    name: str
    role: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        return child_pids(self.proc.pid) if self.alive() else []

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def _signal_group(self, sig: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP the whole group: it holds what it has and takes nothing new."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def kill9(self) -> None:
        """``kill -9`` of the process and everything it forked (a container dying)."""
        self._signal_group(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self, timeout: float = 3.0) -> None:
        if self.alive():
            self._signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Whatever is left of the group (prefork children, a stuck process) goes now.
        self._signal_group(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


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


# --------------------------------------------------------------------------- the witness


@dataclass(frozen=True)
class Answer:
    webhook_id: str
    n: int  # 0 for the first request carrying this webhook-id
    label: str
    success: bool  # the receiver answered 2xx, completely and within the deadline
    at: float  # time.monotonic() on arrival


# A plan decides how the receiver answers the n-th request of an event (see Witness):
# (label, behaviour, whether that is a delivered 2xx).
Plan = Callable[[str, int], tuple[str, rcv.Behaviour, bool]]


class Witness:
    """The receiver, answering by plan and remembering every answer.

    A plan is keyed on the *event* (the ``index`` the Publisher puts in each payload), so
    with a fixed seed each event meets the same behaviours in every run, whatever its
    notification id; requests without one are keyed on their webhook-id.
    """

    def __init__(self, receiver: Receiver, plan: Plan) -> None:
        self.receiver = receiver
        self.plan = plan
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._seen: Counter[str] = Counter()
        self.keys: dict[str, str] = {}  # webhook-id -> the key the plan was given

    def url(self, path: str = "/hook") -> str:
        return self.receiver.program(path, (), self._dispatch)

    def _key(self, webhook_id: str) -> str:
        if webhook_id in self.keys:
            return self.keys[webhook_id]
        key = webhook_id
        # The receiver logged this request (body included) just before calling us.
        for recorded in reversed(self.receiver.requests()):
            if recorded.headers.get("webhook-id") == webhook_id:
                with suppress(ValueError, KeyError, TypeError):
                    key = f"event-{json.loads(recorded.body)['data']['index']}"
                break
        self.keys[webhook_id] = key
        return key

    def _dispatch(self, handler: Any, receiver: Receiver) -> None:
        webhook_id = handler.headers.get("webhook-id") or ""
        arrived = time.monotonic()
        with self._lock:
            n = self._seen[webhook_id]
            self._seen[webhook_id] += 1
            key = self._key(webhook_id)
        label, behaviour, success = self.plan(key, n)
        with self._lock:
            self._answers.append(Answer(webhook_id, n, label, success, arrived))
        behaviour(handler, receiver)

    def answers(self) -> dict[str, list[Answer]]:
        by_id: dict[str, list[Answer]] = defaultdict(list)
        with self._lock:
            for answer in self._answers:
                by_id[answer.webhook_id].append(answer)
        return by_id

    def requests_by_id(self) -> Counter[str]:
        """How many requests the receiver itself logged per webhook-id."""
        logged = self.receiver.requests()
        assert len(logged) < rcv.MAX_REQUESTS, "the receiver's log is full: witness incomplete"
        return Counter(r.headers.get("webhook-id", "") for r in logged)


def steady(delay: float = 0.0) -> Plan:
    """Always 200, after ``delay`` (keeps deliveries in flight long enough to hit)."""
    behaviour = rcv.sleep(delay, rcv.ok()) if delay > 0 else rcv.ok()

    def plan(_key: str, _n: int) -> tuple[str, rcv.Behaviour, bool]:
        return "ok", behaviour, True

    return plan


def flaky(seed: int, share: float = 0.4, max_failures: int = 3) -> Plan:
    """``share`` of the webhooks get 1..max_failures 500s before a 200."""

    def failures(key: str) -> int:
        rng = random.Random(f"{seed}:{key}")
        return rng.randint(1, max_failures) if rng.random() < share else 0

    def plan(key: str, n: int) -> tuple[str, rcv.Behaviour, bool]:
        if n < failures(key):
            return "http_500", rcv.status(500), False
        return "ok", rcv.ok(), True

    return plan


# Chaos: how the receiver fails, and how it succeeds. Each label names the failure kind
# the sender must record for it (None: a 2xx, the attempt succeeds).
def chaos_behaviours(total_timeout: float) -> tuple[dict[str, rcv.Behaviour],
                                                    dict[str, rcv.Behaviour]]:
    failures = {
        "http_500": rcv.status(500),
        "http_502": rcv.status(502),
        "http_503": rcv.status(503),
        "http_504": rcv.sleep(0.3, rcv.status(504)),
        "timeout": rcv.sleep(total_timeout + 1.5, rcv.ok()),  # answers after we gave up
        "reset": rcv.reset(),
        "slow_body": rcv.trickle(400, 0.05),  # 200 headers, body takes 20 s: deadline
        "huge_500": rcv.huge(8 * 1024 * 1024, 500),
        "redirect_301": rcv.redirect("http://127.0.0.1:9/elsewhere", 301),
        "redirect_307": rcv.redirect("/hook-moved", 307),
    }
    successes = {
        "ok_200": rcv.ok(),
        "ok_202": rcv.ok(202, b"accepted"),
        "ok_204": rcv.ok(204, b""),
        "huge_200": rcv.huge(8 * 1024 * 1024, 200),  # read up to the cap, then dropped
        "slow_ok": rcv.sleep(0.4, rcv.ok()),
        "trickle_ok": rcv.trickle(10, 0.03),  # a slow body that still beats the deadline
    }
    return failures, successes


EXPECTED_KIND = {
    "http_500": "http_status", "http_502": "http_status", "http_503": "http_status",
    "http_504": "http_status", "huge_500": "http_status", "timeout": "timeout",
    "slow_body": "timeout", "reset": "connection_reset", "redirect_301": "redirect",
    "redirect_307": "redirect",
}


def chaos(seed: int, total_timeout: float, doomed_share: float = 0.06,
          max_failures: int = 4) -> Plan:
    """Randomised with a fixed seed, per event: a share is doomed (never 2xx), the rest
    fail 0..max_failures times (each a random failure) before a random success."""
    failures, successes = chaos_behaviours(total_timeout)
    failure_labels = sorted(failures)
    success_labels = sorted(successes)

    def plan(key: str, n: int) -> tuple[str, rcv.Behaviour, bool]:
        rng = random.Random(f"{seed}:{key}")
        doomed = rng.random() < doomed_share
        fail_count = rng.choice([0, 0, 1, 1, 2, 3, max_failures])
        pick = random.Random(f"{seed}:{key}:{n}")
        if doomed or n < fail_count:
            label = pick.choice(failure_labels)
            return label, failures[label], False
        label = pick.choice(success_labels)
        return label, successes[label], True

    return plan


def chaos_is_doomed(seed: int, key: str, doomed_share: float = 0.06) -> bool:
    return random.Random(f"{seed}:{key}").random() < doomed_share


# --------------------------------------------------------------------------- the producer


@dataclass
class Publication:
    index: int
    reference: str
    notification_id: str | None = None
    # Every HTTP call: (time.monotonic() when it began, seconds it took, "201" / "503" /
    # "timeout" / an exception name).
    calls: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def started(self) -> float:
        return self.calls[0][0] if self.calls else 0.0


class Publisher:
    """``POST /internal/v1/events`` at a fixed rate, from a few threads, as producers do:
    a call that is not acknowledged with 201 (5xx, refused, timed out) is tried again."""

    def __init__(self, stack: Stack, partner_id: str,
                 callback_url: Callable[[int], str | None] | None = None,
                 give_up_after: float = 60.0) -> None:
        self.stack = stack
        self.partner_id = partner_id
        self.callback_url = callback_url
        self.give_up_after = give_up_after
        self.publications: list[Publication] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._stopping = threading.Event()
        stack.publishers.append(self)  # stopped by Stack.close, whatever happens

    def _publish(self, pub: Publication) -> None:
        body: dict[str, Any] = {"partnerId": self.partner_id, "type": "transaction.paid",
                                "reference": pub.reference,
                                "payload": {"amount": 100 + pub.index, "index": pub.index}}
        if self.callback_url is not None:
            url = self.callback_url(pub.index)
            if url:
                body["callbackUrl"] = url
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline and not self._stopping.is_set():
            began = time.monotonic()
            try:
                response = requests.post(
                    f"{self.stack.api_url}/internal/v1/events", json=body,
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    timeout=REQUEST_TIMEOUT)
            except requests.Timeout:
                pub.calls.append((began, time.monotonic() - began, "timeout"))
            except requests.RequestException as exc:
                pub.calls.append((began, time.monotonic() - began, type(exc).__name__))
            else:
                outcome = str(response.status_code)
                pub.calls.append((began, time.monotonic() - began, outcome))
                if outcome == "201":
                    pub.notification_id = str(response.json()["notificationId"])
                    return
            self._stopping.wait(0.2)

    def start(self, count: int, rate: float, threads: int = 6) -> None:
        """Publish ``count`` events at ``rate`` per second, in the background."""
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="publisher")
        self._pool = pool

        def feed() -> None:
            start = time.monotonic()
            for i in range(count):
                pause = start + i / rate - time.monotonic()
                if pause > 0 and self._stopping.wait(pause):
                    return
                pub = Publication(index=i, reference=f"FAULT-{i:05d}")
                with self._lock:
                    self.publications.append(pub)
                    self._futures.append(pool.submit(self._publish, pub))

        self._thread = threading.Thread(target=feed, name="publisher-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def join(self, timeout: float) -> None:
        """Wait (bounded) until every event was published or given up on."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            futures = list(self._futures)
        wait(futures, timeout=max(0.1, deadline - time.monotonic()))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def acknowledged(self) -> dict[str, Publication]:
        return {p.notification_id: p for p in self.publications if p.notification_id}

    def stats(self, window: tuple[float, float] | None = None) -> dict[str, Any]:
        """API figures; with ``window``, only for the calls made in it (an outage)."""
        calls = [(pub, call) for pub in self.publications for call in pub.calls
                 if window is None or window[0] <= call[0] <= window[1]]
        latencies = sorted(call[1] for _, call in calls)
        return {
            "calls": len(calls),
            "acknowledged": sum(1 for _, call in calls if call[2] == "201"),
            "unacknowledged": (sum(1 for p in self.publications if not p.notification_id)
                               if window is None else None),
            "errors": dict(Counter(call[2] for _, call in calls if call[2] != "201")),
            "max_latency_s": round(latencies[-1], 3) if latencies else 0.0,
            "p50_latency_s": round(latencies[len(latencies) // 2], 3) if latencies else 0.0,
        }


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    kind: str
    start: float
    end: float
    # Whether a delivery in flight at this fault may be sent twice (the POST went out,
    # the outcome could not be recorded). Faults that touch no delivery allow none.
    allows_duplicates: bool
    detail: str = ""


class FaultLog:
    def __init__(self) -> None:
        self.faults: list[Fault] = []

    @contextmanager
    def inject(self, kind: str, allows_duplicates: bool = True,
               detail: str = "") -> Iterator[Fault]:
        fault = Fault(kind, time.monotonic(), 0.0, allows_duplicates, detail)
        try:
            yield fault
        finally:
            fault.end = time.monotonic()
            self.faults.append(fault)

    def in_flight(self, arrived: float, total_timeout: float) -> Fault | None:
        """The fault a request that arrived at ``arrived`` was in flight at, if any: it
        arrived before the fault ended and its send could still be running when it began."""
        for fault in self.faults:
            if (fault.allows_duplicates
                    and fault.start - total_timeout - 1.0 <= arrived <= fault.end + 1.0):
                return fault
        return None

    def summary(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.faults))


# --------------------------------------------------------------------------- the ledger


@dataclass
class Row:
    id: str
    status: str
    next_attempt_at: Any
    held: bool
    attempts: list[tuple[bool, int | None, str | None]]  # (success, status, error kind)


def read_rows(stack: Stack) -> dict[str, Row]:
    rows = {
        r[0]: Row(r[0], r[1], r[2], bool(r[3]), [])
        for r in stack.query("SELECT id, status, next_attempt_at, held FROM notifications")
    }
    for nid, success, status, kind in stack.query(
            "SELECT notification_id, success, response_status, error_payload->>'kind' "
            "FROM attempts ORDER BY started_at, id"):
        if nid in rows:
            rows[nid].attempts.append((bool(success), status, kind))
    return rows


def pending_details(stack: Stack, limit: int = 8) -> list[str]:
    """Why rows are still pending: their bookkeeping and their endpoint's state."""
    details = [
        "pending: " + ", ".join(f"{k}={v}" for k, v in zip(
            ("id", "status", "held", "seq", "lane", "retries", "next", "lease", "scheduled",
             "enqueued", "now"), row, strict=True))
        for row in stack.query(
            "SELECT id, status, held, sequence, lane, retry_attempts, next_attempt_at, "
            "lease_expires_at, scheduled_for, enqueued_at, now() FROM notifications "
            "WHERE next_attempt_at IS NOT NULL OR held ORDER BY sequence LIMIT %s", (limit,))
    ]
    details += [
        "endpoint: " + ", ".join(f"{k}={v}" for k, v in zip(
            ("id", "failing_since", "draining", "failures", "retry_after_until"), row,
            strict=True))
        for row in stack.query(
            "SELECT id, failing_since, draining, consecutive_failures, retry_after_until "
            "FROM endpoints ORDER BY id LIMIT %s", (limit,))
    ]
    return details


@dataclass
class Ledger:
    """The accounting of one run, with the receiver as the witness."""

    scenario: str
    published: int  # acknowledged with 201
    unacknowledged_rows: int  # committed although the producer never got its 201
    delivered: int
    failed_final: int
    pending: int
    lost: int
    duplicates: int
    duplicates_in_flight: int
    duplicates_unexplained: int
    receiver_requests: int
    attempts_recorded: int
    attempts_unrecorded: int  # requests the receiver saw that have no attempt row
    faults: dict[str, int]
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def collect(cls, scenario: str, stack: Stack, witness: Witness, publisher: Publisher,
                faults: FaultLog) -> Ledger:
        total_timeout = stack.setting("DELIVERER_TOTAL_TIMEOUT")
        rows = read_rows(stack)
        answers = witness.answers()
        requests_seen = witness.requests_by_id()
        acknowledged = publisher.acknowledged
        universe = set(acknowledged) | set(rows)
        problems: list[str] = []
        delivered = failed_final = pending = lost = 0
        unrecorded = 0
        for nid in sorted(universe):
            row = rows.get(nid)
            got_2xx = any(a.success for a in answers.get(nid, []))
            seen = requests_seen.get(nid, 0)
            if row is None:
                lost += 1
                problems.append(f"{nid}: acknowledged (201) but no notification row")
                continue
            unrecorded += max(0, seen - len(row.attempts))
            if row.status == "SENT":
                if got_2xx:
                    delivered += 1
                else:
                    lost += 1
                    problems.append(f"{nid}: SENT in the database, never a 2xx at the receiver")
            elif row.next_attempt_at is not None or row.held:
                pending += 1
            elif row.status in ("FAILED", "NOT_SENT") and not got_2xx:
                failed_final += 1
                if len(row.attempts) < seen:
                    problems.append(f"{nid}: {row.status}, {seen} request(s) at the receiver "
                                    f"but {len(row.attempts)} attempt row(s)")
            else:
                lost += 1  # e.g. the merchant got a 2xx, our records say it failed
                problems.append(f"{nid}: final status {row.status}, 2xx at the receiver: "
                                f"{got_2xx}")
        # Duplicates: a webhook-id answered 2xx more than once.
        duplicates = in_flight = unexplained = 0
        for nid, got in answers.items():
            oks = [a for a in got if a.success]
            if len(oks) <= 1:
                continue
            duplicates += 1
            fault = faults.in_flight(oks[0].at, total_timeout)
            if fault is not None:
                in_flight += 1
            else:
                unexplained += 1
                problems.append(f"{nid}: {len(oks)} 2xx answers, first not in flight at any "
                                f"fault")
        if pending:
            problems.extend(pending_details(stack))
        strays = set(requests_seen) - universe
        if strays:
            problems.append(f"{len(strays)} request(s) with a webhook-id never published")
        return cls(
            scenario=scenario,
            extra={"api_exceptions": stack.exceptions("web")},
            published=len(acknowledged),
            unacknowledged_rows=len(set(rows) - set(acknowledged)),
            delivered=delivered,
            failed_final=failed_final,
            pending=pending,
            lost=lost,
            duplicates=duplicates,
            duplicates_in_flight=in_flight,
            duplicates_unexplained=unexplained,
            receiver_requests=sum(requests_seen.values()),
            attempts_recorded=sum(len(r.attempts) for r in rows.values()),
            attempts_unrecorded=unrecorded,
            faults=faults.summary(),
            problems=problems,
        )

    @property
    def balanced(self) -> bool:
        total = self.published + self.unacknowledged_rows
        return total == self.delivered + self.failed_final + self.pending + self.lost

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = self.problems[:30]
        data["balanced"] = self.balanced
        return data

    def summary_line(self) -> str:
        faults = ", ".join(f"{k} x{v}" for k, v in sorted(self.faults.items())) or "none"
        seconds = self.extra.get("duration_s")
        extra_rows = (f" (+{self.unacknowledged_rows} unacknowledged)"
                      if self.unacknowledged_rows else "")
        return (f"{self.scenario}: published {self.published}{extra_rows}"
                f", delivered {self.delivered}, failed-final {self.failed_final}, "
                f"pending {self.pending}, lost {self.lost}, duplicates {self.duplicates} "
                f"({self.duplicates_in_flight} in flight at a fault), faults: {faults}"
                + (f", {seconds:.1f}s" if seconds is not None else ""))

    def explain(self, stack: Stack | None = None) -> str:
        text = json.dumps(self.as_dict(), indent=1, default=str)
        if stack is not None:
            text += "\n" + stack.logs(lines=15)
        return text


# --------------------------------------------------------------------------- the report


class FaultReport:
    """Figures per scenario, written as JSON after each one (``DELIVERER_FAULT_REPORT``,
    else a file in the temporary directory) and summarised at the end of the session."""

    def __init__(self) -> None:
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        configured = os.environ.get("DELIVERER_FAULT_REPORT")
        self.path = Path(configured) if configured else (
            Path(tempfile.gettempdir()) / f"deliverer-fault-report-{os.getpid()}.json")

    def record(self, ledger: Ledger) -> None:
        self.scenarios[ledger.scenario] = ledger.as_dict()
        self.lines = [line for line in self.lines
                      if not line.startswith(ledger.scenario + ":")]
        self.lines.append(ledger.summary_line())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"scenarios": self.scenarios}, indent=2,
                                        default=str) + "\n")


REPORT = FaultReport()
