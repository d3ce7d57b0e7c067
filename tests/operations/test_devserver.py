"""``deliverer run`` (what ``scripts/start`` runs) as a user runs it: the real script in a
subprocess, on the embedded default in a temporary directory and a free loopback port.

Run once (``unit``): it brings its own database and broker, whatever the backend.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from deliverer.config import Settings
from deliverer.demo import play
from deliverer.devserver import port_in_use
from tests.support.cli import DELIVERER
from tests.support.page_client import PortalClient
from tests.support.ports import free_port
from tests.support.processes import session_pids
from tests.support.raw_http import assert_refusals_in_json
from tests.support.receiver import Receiver, sleep, status
from tests.support.waiting import wait_until

pytestmark = pytest.mark.unit

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


@contextmanager
def answering(status: int) -> Iterator[int]:
    """A loopback HTTP server answering ``status`` to everything (200: as another
    deliverer's /healthz would); yields its port."""
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"statusCode": %d}' % status)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def devserver_env(data_dir: Path) -> dict[str, str]:
    """A user's environment: the embedded default under ``data_dir``, nothing else of
    deliverer's from the calling shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DELIVERER_", "PROMETHEUS_"))
           and k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PORT")}
    env.update({"DELIVERER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    return env


class Running:
    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"deliverer run exited {self.proc.returncode} before "
                                     f"{text!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output}")
            time.sleep(0.1)


@contextmanager
def deliverer_run(data_dir: Path, *args: str, **env: str) -> Iterator[Running]:
    """``deliverer run ARGS...`` in a session of its own (its children make process
    groups of their own in it: whatever is left of the session at the end is killed,
    and only that)."""
    # With Ctrl-C as a terminal leaves it: a script's background job (CI run with &)
    # inherits SIGINT ignored, and so would deliverer run, and the Ctrl-C tests' signal.
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        proc = subprocess.Popen([str(DELIVERER), "run", *args],
                                env={**devserver_env(data_dir), **env},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        yield Running(proc)
    finally:
        for pid in session_pids(proc.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


TOKEN = "test-admin-token"


@contextmanager
def a_post_in_flight(tmp_path: Path, receiver: Receiver) -> Iterator[tuple[Running, str]]:
    """``deliverer run`` with one POST in flight to a receiver that answers after 12 s;
    yields it and the notification's id."""
    port = free_port()
    hook = receiver.program("/hook", [], then=sleep(12.0, status(200)))
    with deliverer_run(tmp_path, "--port", str(port), DELIVERER_ADMIN_TOKEN=TOKEN,
                       DELIVERER_ALLOW_PRIVATE_URLS="1") as running:
        running.wait_for("deliverer is up")
        base, admin = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
        partner = requests.post(f"{base}/internal/v1/partners", headers=admin, timeout=10,
                                json={"name": "Slow", "webhookUrl": hook})
        assert partner.status_code == 201, partner.text
        event = requests.post(f"{base}/internal/v1/events", headers=admin, timeout=10,
                              json={"partnerId": partner.json()["id"], "type": "t.paid",
                                    "reference": "TXN-SLOW", "payload": {"n": 1}})
        assert event.status_code == 201, event.text
        receiver.wait_for(1, "/hook", timeout=30)
        yield running, event.json()["notificationId"]


def test_what_gunicorn_refuses_answers_as_the_api_does(tmp_path: Path):
    """A request line or header fields too large, or no HTTP at all: gunicorn answers
    before the app sees the request, with the API's JSON error body (``deliverer/web_workers.py``),
    not its HTML page."""
    port = free_port()
    with deliverer_run(tmp_path, "--port", str(port)) as running:
        running.wait_for("deliverer is up")
        assert_refusals_in_json(port)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_stop_signal_stops_web_worker_and_beat(tmp_path: Path, signum: int):
    """A supervisor's SIGTERM (or the terminal's SIGHUP) reaches ``deliverer run`` alone:
    it must stop its children as Ctrl-C does, and free the port."""
    port = free_port()
    with deliverer_run(tmp_path, "--port", str(port)) as running:
        running.wait_for("deliverer is up")
        children = [pid for pid in session_pids(running.proc.pid) if pid != running.proc.pid]
        assert len(children) >= 4, running.output  # gunicorn and its workers, worker, beat
        assert port_in_use(port)

        running.proc.send_signal(signum)
        assert running.proc.wait(STOP_TIMEOUT) == 0, running.output
        wait_until(lambda: not session_pids(running.proc.pid), STOP_TIMEOUT, interval=0.1,
                   message="the children of deliverer run to exit")
        assert not port_in_use(port)


def test_stopping_lets_a_post_in_flight_finish_and_be_recorded(tmp_path: Path,
                                                             receiver: Receiver):
    """The worker's warm shutdown finishes the POSTs it started, however long they take
    (connect + total timeout, 20 s by default): cut off, a POST would be unrecorded, and
    sent again once its lease ran out."""
    with a_post_in_flight(tmp_path, receiver) as (running, nid):
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(60) == 0, running.output
        wait_until(lambda: not session_pids(running.proc.pid), STOP_TIMEOUT, interval=0.1,
                   message="the children of deliverer run to exit")

    assert len(receiver.requests("/hook")) == 1  # answered 200: the attempt below
    with sqlite3.connect(tmp_path / "deliverer.db") as db:
        assert db.execute("SELECT status, lease_expires_at FROM notifications WHERE id = ?",
                          (nid,)).fetchall() == [("SENT", None)]
        assert db.execute("SELECT success FROM attempts WHERE notification_id = ?",
                          (nid,)).fetchall() == [(1,)]
    assert "waiting up to 65 s for the worker" in running.output, running.output


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path: Path,
                                                          receiver: Receiver):
    """A terminal's Ctrl-C goes to its foreground process group: the children have
    groups of their own, so only ``deliverer run`` gets it. The second one reached
    the worker too, whose threads pool cannot do Celery's cold shutdown (a CRITICAL
    traceback)."""
    with a_post_in_flight(tmp_path, receiver) as (running, _nid):
        os.killpg(running.proc.pid, signal.SIGINT)  # as the terminal sends it
        running.wait_for("stopping: waiting up to", timeout=STOP_TIMEOUT)
        os.killpg(running.proc.pid, signal.SIGINT)
        assert running.proc.wait(STOP_TIMEOUT) == 0, running.output
        wait_until(lambda: not session_pids(running.proc.pid), STOP_TIMEOUT, interval=0.1,
                   message="the children of deliverer run to exit")
    assert "CRITICAL" not in running.output and "Traceback" not in running.output, \
        running.output


def test_a_second_run_on_the_same_data_directory_is_refused(tmp_path: Path):
    """On another port it migrated the same database, emptied the first one's metrics
    directory and ran a second worker and beat on the same SQLite files."""
    port = free_port()
    with deliverer_run(tmp_path, "--port", str(port)) as first:
        first.wait_for("deliverer is up")
        with deliverer_run(tmp_path, "--port", str(free_port())) as second:
            assert second.proc.wait(STOP_TIMEOUT) == 1
            second.wait_for(f"Error: another `deliverer run` uses {tmp_path}: stop it "
                            "first, or set DELIVERER_DATA_DIR to another directory")
            assert "Traceback" not in second.output
        healthz = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert healthz.status_code == 200


def test_killed_with_kill_9_its_children_stop_too(tmp_path: Path):
    """``kill -9`` of ``deliverer run`` alone (its children have process groups of their
    own): web, worker and beat went on serving, holding the port and the data
    directory's lock, and the next ``deliverer run`` was refused until someone found
    them. They get SIGTERM (Linux's parent-death signal): a warm shutdown, the lock held
    until the last has gone."""
    port = free_port()
    with deliverer_run(tmp_path, "--port", str(port)) as first:
        first.wait_for("deliverer is up")
        assert len(session_pids(first.proc.pid)) >= 5, first.output
        first.proc.kill()
        first.proc.wait(STOP_TIMEOUT)
        wait_until(lambda: not session_pids(first.proc.pid), STOP_TIMEOUT, interval=0.1,
                   message="the children of a killed deliverer run to exit")
        assert not port_in_use(port)
    with deliverer_run(tmp_path, "--port", str(port)) as again:
        again.wait_for("deliverer is up")


def test_the_demo_shows_the_console_and_the_admin_token_it_made_up(tmp_path: Path):
    """The demo makes up an admin token: without it shown, nobody could open the
    console the README points to."""
    port = free_port()
    with deliverer_run(tmp_path, "--port", str(port), "--demo") as running:
        running.wait_for("Press Ctrl-C to stop.")  # the demo has delivered
        console = f"http://127.0.0.1:{port}/console/"
        match = re.search(rf"operator console: {re.escape(console)} \(sign in with the "
                          r"admin token (demo-[0-9a-f]{24}), made up for this local demo",
                          running.output)
        assert match, running.output
        # The demo's settings are the instance's: said (an embedded-default try ran a
        # merchant of its own on them unawares).
        assert ("demo settings for this whole instance: the ladder 200x faster (its 30 "
                "days last 3.6 h), webhook URLs on loopback and private addresses allowed, "
                "the sweep every 1 s (DELIVERER_TIME_SCALE=0.005 "
                "DELIVERER_ALLOW_PRIVATE_URLS=1 DELIVERER_SWEEP_INTERVAL=1; set any of them "
                "in the environment to choose its value, or run `deliverer run` without "
                "--demo for the defaults)"
                ) in running.output
        closed = requests.get(console, timeout=10, allow_redirects=False)
        assert closed.status_code == 302
        opened = requests.get(console, auth=("operator", match.group(1)), timeout=10)
        assert opened.status_code == 200
        # And a link into the demo merchant's portal, which opens it once.
        link = re.search(rf"its merchant portal, .*: (http://127\.0\.0\.1:{port}/portal/"
                         r"enter\?token=\S+)", running.output)
        assert link, running.output
        assert "Your webhook endpoints" in PortalClient(f"http://127.0.0.1:{port}").open_link(
            link.group(1)).text
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(STOP_TIMEOUT) == 0, running.output
        wait_until(lambda: not session_pids(running.proc.pid), STOP_TIMEOUT, interval=0.1,
                   message="the children of deliverer run to exit")


def test_a_port_another_program_holds_is_refused_before_anything_starts(tmp_path: Path):
    """Another deliverer (its /healthz answers 200) or any other program on the port: no
    false "deliverer is up", no traceback, nothing started or migrated."""
    with answering(200) as port, deliverer_run(tmp_path, "--port", str(port)) as running:
        assert running.proc.wait(STOP_TIMEOUT) == 1
        running.wait_for(f"Error: port {port} is in use: pass --port or set PORT")
        assert "deliverer is up" not in running.output
        assert "Traceback" not in running.output
        assert session_pids(running.proc.pid) == []
        assert not (tmp_path / "deliverer.db").exists()


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path):
    for args, env in ((["--port", "99999"], {}), ([], {"PORT": "0"})):
        result = subprocess.run([str(DELIVERER), "run", *args], capture_output=True,
                                text=True, timeout=STOP_TIMEOUT, stdin=subprocess.DEVNULL,
                                env={**devserver_env(tmp_path), **env})
        assert result.returncode == 2, result.stderr
        assert "is not in the range 1<=x<=65535" in result.stderr
        assert "Traceback" not in result.stderr


def test_the_demo_says_what_the_api_answered_instead_of_a_key_error(tmp_path: Path, capsys):
    settings = Settings.from_env({"DELIVERER_DATA_DIR": str(tmp_path),
                                  "DELIVERER_ADMIN_TOKEN": "not-the-servers-token"})
    with answering(401) as port:
        assert play(f"http://127.0.0.1:{port}", settings, timeout=5) is False
    out = capsys.readouterr().out
    assert "the demo stops: POST /internal/v1/partners answered HTTP 401" in out


def test_the_web_worker_classes_import_nothing_of_the_app():
    """gunicorn's master imports the worker class and forks every later worker from
    itself: what it imports stays the old code in workers a HUP makes."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, deliverer.web_workers; print(' '.join("
         "m for m in sys.modules if m.split('.')[0] in ('api', 'deliverer')))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert sorted(loaded) == ["deliverer", "deliverer.http_codes", "deliverer.web_workers"]
