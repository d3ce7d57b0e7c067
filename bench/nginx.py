"""A fast receiver that is not Python: nginx from Debian, answering 200 to every POST.

It runs as a foreground child (``-g 'daemon off;'``) with a config in the bench's temp
dir, on a free loopback port, and logs one line per request (``$msec $uri $status``)
so the suite can count what each phase actually sent.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from bench.env import BenchEnv
from bench.processes import BenchError, Proc, free_port, wait_until

CONFIG = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$msec $uri $status';
    access_log {dir}/access.log bench;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


class Nginx:
    label = "nginx (Debian), return 200"

    def __init__(self, env: BenchEnv) -> None:
        binary = nginx_binary()
        if binary is None:
            raise BenchError("nginx not found (scripts/bootstrap installs Debian's nginx-light)")
        self.dir = env.tmp / "nginx"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(CONFIG.format(dir=self.dir, port=self.port))
        self.proc: Proc = env.procs.start(
            "nginx", [binary, "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"],
            env.env())
        wait_until(self._answers, 10, "nginx to listen")

    def _answers(self) -> bool:
        import requests

        if not self.proc.alive():
            raise BenchError(f"nginx exited: {self.proc.tail()}")
        try:
            return requests.post(self.url("/ping"), data=b"x", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def alive(self) -> bool:
        return self.proc.alive()

    def counts(self, prefix: str) -> Counter[str]:
        """Requests logged under ``prefix``, by status."""
        counts: Counter[str] = Counter()
        log = self.dir / "access.log"
        if log.exists():
            with log.open() as handle:
                for line in handle:
                    parts = line.split()
                    if len(parts) == 3 and parts[1].startswith(prefix):
                        counts[parts[2]] += 1
        return counts


class PythonStandIn:
    """Where nginx is not installed: the Python receiver, with the same ``url``/``counts``
    (much slower: the throughput figures then say more about it than about deliverer)."""

    label = "Python receiver (nginx not installed: figures not comparable)"

    def __init__(self, env: BenchEnv) -> None:
        from bench.receiver import ReceiverClient

        self.receiver = ReceiverClient(env)

    def url(self, path: str) -> str:
        return self.receiver.url(path)

    def alive(self) -> bool:
        return self.receiver.proc.alive()

    def counts(self, prefix: str) -> Counter[str]:
        return Counter(str(status) for _id, path, _at, status in self.receiver.records()
                       if path.startswith(prefix))


def fast_receiver(env: BenchEnv) -> Nginx | PythonStandIn:
    return Nginx(env) if nginx_binary() is not None else PythonStandIn(env)
