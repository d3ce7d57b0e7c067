"""``deliverer run``: the Procfile's web, worker and beat on one machine.

It starts the same three commands the Procfile lists, as child processes, after
applying the migrations, and stops them together: on Ctrl-C, SIGTERM or SIGHUP, or when
one of them exits. With nothing configured that is the
embedded default: SQLite plus kombu's SQLAlchemy transport.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import requests

from deliverer.broker import queues
from deliverer.config import Settings, masked_url, set_settings
from deliverer.delivery.sending.runs import RECORDING_MARGIN

# The demo runs the ladder 200x faster: 2 minutes become 0.6 s.
DEMO_TIME_SCALE = "0.005"
# What ``--demo`` sets where the environment does not, and how the banner says it.
DEMO_SETTINGS = {"DELIVERER_TIME_SCALE": DEMO_TIME_SCALE,
                 "DELIVERER_ALLOW_PRIVATE_URLS": "1",
                 "DELIVERER_SWEEP_INTERVAL": "1"}


def demo_settings_line(applied: dict[str, str], settings: Settings) -> str | None:
    """The banner's line on the demo's settings this instance runs on, if any."""
    if not applied:
        return None
    said = []
    if "DELIVERER_TIME_SCALE" in applied:
        scale, cycle = settings.time_scale, settings.ladder.max_age
        said.append(f"the ladder {1 / scale:.0f}x faster (its {cycle / 86400:g} days last "
                    f"{cycle * scale / 3600:.1f} h)")
    if "DELIVERER_ALLOW_PRIVATE_URLS" in applied:
        said.append("webhook URLs on loopback and private addresses allowed")
    if "DELIVERER_SWEEP_INTERVAL" in applied:
        said.append(f"the sweep every {applied['DELIVERER_SWEEP_INTERVAL']} s")
    names = " ".join(f"{name}={value}" for name, value in applied.items())
    return (f"demo settings for this whole instance: {', '.join(said)} ({names}; set any "
            "of them in the environment to choose its value, or run `deliverer run` "
            "without --demo for the defaults)")


def process_commands(settings: Settings, port: int, concurrency: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "web": [py, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--worker-class", "deliverer.web_workers.PlainWorker", "--no-control-socket",
                "api:create_app()"],
        "worker": [py, "-m", "celery", "-A", "deliverer.worker", "worker", "--pool", "threads",
                   "--concurrency", str(concurrency), "-Q", ",".join(queues.ALL),
                   "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
        "beat": [py, "-m", "celery", "-A", "deliverer.worker", "beat", "--loglevel", "WARNING"],
    }


class StartFailed(Exception):
    """``deliverer run`` could not start (the port is taken, a process died at start)."""


def port_in_use(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:``port`` (another deliverer, or
    any other program): binding it is the only check that does not depend on what that
    program answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def lock_data_dir(settings: Settings) -> int:
    """Hold the data directory for this run (an open file's lock, let go when the process
    ends however it ends): a second ``deliverer run`` on another port would migrate the
    same database, empty this one's metrics directory, and run a second worker and beat
    on the same SQLite files. Returns the lock's descriptor."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.data_dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartFailed(f"another `deliverer run` uses {settings.data_dir}: stop it "
                          "first, or set DELIVERER_DATA_DIR to another directory") from None
    return fd


def _wait_healthy(base_url: str, procs: dict[str, subprocess.Popen[bytes]],
                  timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise StartFailed(f"{name} exited with {proc.returncode}")
        try:
            if requests.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise StartFailed("the API did not come up in time")


class _Stopped(Exception):
    """SIGTERM or SIGHUP reached ``deliverer run``: stop everything, as Ctrl-C does."""


# A supervisor (systemd, docker stop, a CI runner) sends SIGTERM; closing the terminal
# sends SIGHUP. Both reach this process alone, not its children: without a handler it
# died at once and left gunicorn (holding the port), the worker and beat running.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def stop_grace(settings: Settings) -> float:
    """How long the children get to stop before they are killed: as long as a worker may
    hold a lease. Celery's warm shutdown lets the worker finish the POSTs it has started
    and record them; killed sooner, it leaves them leased and unrecorded, and each is
    POSTed a second time once its lease runs out."""
    return settings.lease_seconds + RECORDING_MARGIN


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Each child leads a process group of its own: gunicorn's workers go with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _stop(procs: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    told = False
    try:
        # The worker first: it is the one finishing POSTs, and the one to name if slow
        # (gunicorn may take a few seconds of its own to stop meanwhile).
        for name, proc in sorted(procs.items(), key=lambda item: item[0] != "worker"):
            while proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill_group(proc)
                    break
                try:
                    proc.wait(timeout=min(left, 2.0))
                except subprocess.TimeoutExpired:
                    if not told:
                        # What is lost by not waiting is the worker's alone to say.
                        what = (" to finish what it started (Ctrl-C again to stop at "
                                "once; what it was sending is then sent again later)"
                                if name == "worker" else
                                " to stop (Ctrl-C again to stop at once)")
                        print(f"stopping: waiting up to {grace:.0f} s for the {name}{what}",
                              file=sys.stderr, flush=True)
                        told = True
    except KeyboardInterrupt:
        for proc in procs.values():
            if proc.poll() is None:
                _kill_group(proc)


def _console_line(base_url: str, settings: Settings, made_up_token: str | None) -> str:
    console = f"operator console: {base_url}/console/"
    if made_up_token is not None:
        # A credential made up for this local run, on loopback: safe to show, and the
        # only way in (it was never printed before).
        return (f"{console} (sign in with the admin token {made_up_token}, made up for "
                f"this local demo; set DELIVERER_ADMIN_TOKEN to choose your own)")
    if settings.admin_token:
        return f"{console} (sign in with your DELIVERER_ADMIN_TOKEN)"
    return f"{console} (closed: set DELIVERER_ADMIN_TOKEN to open it)"


def _stop_with(parent: int) -> Callable[[], None] | None:
    """What a child runs before its command: SIGTERM (a warm shutdown) when this process
    dies, killed too. Otherwise, in groups of their own, web, worker and beat went on
    serving after a ``kill -9`` of this process, holding the port and the data
    directory's lock, and the next ``deliverer run`` was refused until someone found
    them. Linux's parent-death signal; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def stop_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # died before the line above: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return stop_with_parent


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_all(*, port: int, demo: bool, exit_after_demo: bool, concurrency: int) -> int:
    """Start web, worker and beat; returns the exit status. Raises ``StartFailed``."""
    # Before anything else: a second instance would otherwise migrate the same
    # database, empty the first one's metrics directory, and take the first one's
    # /healthz for its own.
    if port_in_use(port):
        raise StartFailed(f"port {port} is in use: pass --port or set PORT")
    env = dict(os.environ)
    # The demo's settings are the whole instance's (web, worker and beat read one
    # environment): said at the start, or a merchant added later climbs a ladder that
    # is 200 times faster and may be given a private address (an embedded-default try).
    demo_settings = {name: value for name, value in DEMO_SETTINGS.items()
                     if demo and name not in env}
    env.update(demo_settings)
    # The demo needs an admin token (it creates its partner over /internal/v1); made up
    # here unless the user set one, and then shown, or nobody could open the console.
    made_up_token = None
    if demo and not env.get("DELIVERER_ADMIN_TOKEN"):
        made_up_token = env["DELIVERER_ADMIN_TOKEN"] = "demo-" + secrets.token_hex(12)
    settings = Settings.from_env(env)
    set_settings(settings)
    lock = lock_data_dir(settings)
    env["DELIVERER_DATA_DIR"] = str(settings.data_dir)
    # web and worker are separate processes: share prometheus-client's multiprocess
    # directory so /metrics shows the worker's delivery counters (fresh at every start).
    if "PROMETHEUS_MULTIPROC_DIR" not in env:
        metrics_dir = settings.data_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from deliverer.migrate import upgrade

    upgrade(settings)
    if settings.broker_is_sqla:
        from deliverer.broker.queues import ALL
        from deliverer.broker.sqla_broker import declare_queues

        declare_queues(settings.broker_url, ALL)
    base_url = f"http://127.0.0.1:{port}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        for name, cmd in process_commands(settings, port, concurrency).items():
            # Each in a process group of its own: a terminal's Ctrl-C reaches this
            # process alone, which stops them with SIGTERM (a warm shutdown). The second
            # Ctrl-C kills them; sent to the worker as well, it asked Celery's threads
            # pool for a cold shutdown it cannot do (a CRITICAL traceback).
            # The lock passed on: held while any of them runs, this process killed too.
            procs[name] = subprocess.Popen(cmd, env=env, process_group=0, pass_fds=(lock,),
                                           preexec_fn=_stop_with(os.getpid()))
        _wait_healthy(base_url, procs)
        print(f"deliverer is up: API {base_url} (database {masked_url(settings.database_url)}, "
              f"broker {masked_url(settings.broker_url)})", flush=True)
        print(_console_line(base_url, settings, made_up_token), flush=True)
        if (line := demo_settings_line(demo_settings, settings)) is not None:
            print(line, flush=True)
        if demo:
            from deliverer.demo import play

            ok = play(base_url, settings)
            if exit_after_demo:
                return 0 if ok else 1
        print("Press Ctrl-C to stop.", flush=True)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        dead = [n for n, p in procs.items() if p.poll() is not None]
        print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stopped):
        return 0
    finally:
        for sig in STOP_SIGNALS:  # a second signal must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        _stop(procs, stop_grace(settings))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
