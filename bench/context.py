"""What every benchmark shares: the environment, sizes, the deliverer processes, helpers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import BenchEnv
from bench.nginx import Nginx, PythonStandIn, fast_receiver
from bench.processes import BenchError, Proc, procfile, wait_until

PAYLOAD = {"amount": 12_500, "currency": "EUR", "status": "paid",
           "customer": {"id": "cus_4f9a1c", "country": "NL"},
           "metadata": {"order": "ORD-2026-000123", "channel": "web"}}


@dataclass
class Ctx:
    env: BenchEnv
    smoke: bool
    results_dir: Path
    profile: bool = False
    workers: int = 2
    concurrency: int | None = None  # None: the Procfile's default (WORKER_CONCURRENCY)
    _nginx: Nginx | PythonStandIn | None = None
    notes: list[str] = field(default_factory=list)

    def size(self, full: float, smoke: float) -> Any:
        return smoke if self.smoke else full

    def nginx(self) -> Nginx | PythonStandIn:
        """The fast receiver: nginx, or the Python receiver where nginx is not installed."""
        if self._nginx is None or not self._nginx.alive():
            self._nginx = fast_receiver(self.env)
        return self._nginx

    # ------------------------------------------------------------ deliverer processes

    def deliverer_env(self, **overrides: object) -> dict[str, str]:
        extra: dict[str, object] = {}
        if self.concurrency is not None:
            extra["WORKER_CONCURRENCY"] = self.concurrency
        extra.update(overrides)
        return self.env.env(**extra)

    def start_workers(self, env: Mapping[str, str], count: int | None = None,
                      wait: bool = True) -> list[Proc]:
        """The Procfile's worker line, ``count`` times (one per core by default), each with
        its own node name as separate machines or dynos would have."""
        count = count or self.workers
        base = procfile()["worker"]
        procs = []
        for i in range(count):
            command = f"{base} -n bench{i + 1}@%h"
            procs.append(self.env.procs.start(f"worker{i + 1}", ["bash", "-c", "exec " + command],
                                              env))
        if wait:
            for proc in procs:
                wait_ready(proc, "ready.")
        return procs

    def start_beat(self, env: Mapping[str, str]) -> Proc:
        proc = self.env.procs.start_procfile("beat", env)
        wait_ready(proc, "beat: Starting")
        return proc

    def stop(self, procs: Sequence[Proc], timeout: float = 20.0) -> None:
        for proc in procs:
            self.env.procs.stop(proc, timeout=timeout)


def wait_ready(proc: Proc, marker: str, timeout: float = 60.0) -> None:
    def ready() -> bool:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        return marker in proc.log_text()

    wait_until(ready, timeout, f"{proc.name} to start", interval=0.1)


def log_errors(procs: Sequence[Proc], limit: int = 5) -> list[str]:
    """Tracebacks and ERROR lines in the processes' logs (reported, for diagnosis)."""
    found: list[str] = []
    for proc in procs:
        for line in proc.log_text().splitlines():
            if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line):
                found.append(f"{proc.name}: {line.strip()[:300]}")
                if len(found) >= limit:
                    return found
    return found


# ---------------------------------------------------------------- data set-up

def create_partners(settings: Any, urls: Sequence[str | None], prefix: str = "Bench"
                    ) -> list[tuple[str, str]]:
    """One partner per URL (its webhook URL); returns (partner id, API key) pairs."""
    from deliverer.db import session_scope
    from deliverer.partners.service import create_partner

    created = []
    with session_scope() as session:
        for i, url in enumerate(urls):
            new = create_partner(session, settings, name=f"{prefix} {i}", webhook_url=url)
            created.append((new.partner_id, new.api_key))
    return created


def event_spec(i: int, callback_url: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "transaction.paid", "reference": f"TXN-{i:08d}",
                            "payload": {**PAYLOAD, "sequence": i}}
    if callback_url:
        spec["callback_url"] = callback_url
    return spec


def bulk_publish(settings: Any, partner_id: str, specs: Sequence[dict[str, Any]],
                 batch: int = 500) -> tuple[list[str], str]:
    """Publish many events of one partner; returns notification ids and the method used.

    ``publishing.service.publish_events`` (one transaction per batch) when the code base
    has it; otherwise ``publish_event`` per event, ``batch`` of them per transaction.
    """
    from deliverer.db import session_scope
    from deliverer.publishing import service

    ids: list[str] = []
    # record_events: publish_events before the publishing service was renamed.
    bulk = getattr(service, "record_events", None) or getattr(service, "publish_events", None)
    one: Any = vars(service).get("record_event") or vars(service).get("publish_event")
    for start in range(0, len(specs), batch):
        chunk = specs[start:start + batch]
        with session_scope() as session:
            if bulk is not None:
                published = bulk(session, settings, partner_id=partner_id, events=list(chunk))
            else:
                published = [one(session, settings, partner_id=partner_id, **spec)
                             for spec in chunk]
        ids.extend(p.notification_id for p in published)
    return ids, ("publish_events" if bulk is not None else "publish_event per event")
