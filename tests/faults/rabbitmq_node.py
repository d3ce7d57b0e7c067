"""A private RabbitMQ node for the fault suite's RabbitMQ pass: stopped and restarted by
the scenarios, never the machine's shared server.

The node has its own name, AMQP and Erlang distribution ports on loopback, data and
log directories, and configuration file (the machine's ``rabbitmq.conf`` binds 5672), in
a temporary directory. As root it runs as the ``rabbitmq`` OS user (whose Erlang cookie
it uses), as the system's own node does. Durable queues and persistent messages survive
its restart, as on a real server. Its default vhost ``/`` and ``guest`` user serve the
stack.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path

from kombu import Connection

from deliverer.broker import queues
from tests.support.ports import free_port
from tests.support.processes import group_pids
from tests.support.tls import self_signed_certificate
from tests.support.waiting import wait_until

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class PrivateRabbitMQ:
    """Same interface as ``harness.PrivateRedis``: url, ping, queued_messages, start, stop."""

    def __init__(self, tls: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="deliverer-faults-rabbitmq-"))
        self.as_rabbitmq = os.geteuid() == 0
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"deliverer-faults-{secrets.token_hex(4)}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        config = f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
        self.certificate: tuple[Path, Path] | None = None
        self.tls_port = 0
        if tls:
            config += self._tls_config()
        (self.root / "rabbitmq.conf").write_text(config)
        (self.root / "enabled_plugins").write_text("[].\n")
        if self.as_rabbitmq:
            user = pwd.getpwnam("rabbitmq")
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _tls_config(self) -> str:
        """A TLS listener too, with a certificate for 127.0.0.1 only, on 127.0.0.1 and on
        127.0.0.2 (loopback as well, but a name the certificate does not cover)."""
        self.certificate = self_signed_certificate(self.root, "rabbitmq")
        if self.certificate is None:
            raise RuntimeError("a TLS RabbitMQ needs the openssl command")
        cert, key = self.certificate
        self.tls_port = free_port()
        return (f"listeners.ssl.one = 127.0.0.1:{self.tls_port}\n"
                f"listeners.ssl.two = 127.0.0.2:{self.tls_port}\n"
                f"ssl_options.cacertfile = {cert}\n"
                f"ssl_options.certfile = {cert}\nssl_options.keyfile = {key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def tls_url(self, host: str = "127.0.0.1") -> str:
        return f"amqps://guest:guest@{host}:{self.tls_port}//"

    def _connect(self, timeout: float) -> Connection:
        conn = Connection(self.url, connect_timeout=timeout)
        conn.connect()
        return conn

    def ping(self) -> bool:
        try:
            self._connect(1.0).close()
            return True
        except Exception:
            return False

    def queued_messages(self) -> int:
        """Task messages waiting (ready) in deliverer's queues."""
        conn = self._connect(5.0)
        try:
            total = 0
            for name in queues.ALL:
                channel = conn.channel()
                try:
                    total += channel.queue_declare(name, passive=True).message_count
                except conn.channel_errors:
                    pass  # not declared yet; the channel is closed by the broker
                else:
                    channel.close()
            return total
        finally:
            conn.close()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update({
            "HOME": pwd.getpwnam("rabbitmq").pw_dir if self.as_rabbitmq else env["HOME"],
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "node.pid"),
            # Not the machine's rabbitmq-env.conf, which names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "no-env.conf"),
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    def start(self, timeout: float = 90.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "rabbitmq already running"
        self.starts += 1
        cmd = [SERVER]
        if self.as_rabbitmq:
            # runuser keeps the environment given here (-u without a login shell).
            cmd = ["runuser", "-u", "rabbitmq", "--", SERVER]
        log = self.root / f"server-{self.starts}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=self._env(), cwd=self.root,
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.ping(), timeout,
                   message="rabbitmq to answer", interval=0.25)
        if self.tls_port:  # its TLS listeners may open after the TCP one
            wait_until(lambda: proc.poll() is not None or _listens(self.tls_port), timeout,
                       message="rabbitmq's TLS listener", interval=0.25)
        if proc.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with {proc.returncode}: "
                               f"{log.read_text(errors='replace')[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """SIGTERM: the node shuts down cleanly (the Erlang VM handles it); SIGKILL: a crash."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # The VM itself may outlive the wrapper for a moment: wait for the group to go.
        with suppress(AssertionError):
            wait_until(lambda: not group_pids(proc.pid), timeout, message="rabbitmq to exit",
                       interval=0.1)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def destroy(self) -> None:
        try:
            self.stop(signal.SIGKILL, timeout=10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0
