"""``python -m bench``: run the benchmark suite, print the table, write the JSON.

See BENCHMARKS.rst at the repository root for what each benchmark measures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import api, backlog, isolation, latency, publish_cost, retention, retry, throughput
from bench.context import Ctx
from bench.env import BenchEnv
from bench.processes import REPO
from bench.report import Result, render_rst, render_text, table

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m for m in (throughput, latency, publish_cost, retry, backlog, isolation, api,
                        retention)
}
DEFAULT_OUTPUT = REPO / "bench" / "results" / "latest.json"


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(), "cores": os.cpu_count(), "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                   / 2**30, 1)
    except (OSError, ValueError):
        pass
    for name, argv in {"postgresql": ["psql", "--version"],
                       "redis": ["redis-server", "--version"],
                       "nginx": ["nginx", "-v"], "wrk": ["wrk", "--version"]}.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            info[name] = (done.stdout + done.stderr).strip().splitlines()[0][:100]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            info[name] = None
    return info


def _git() -> dict[str, Any]:
    def out(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"commit": out("rev-parse", "HEAD"),
            "dirty_files": len([x for x in out("status", "--porcelain").splitlines() if x])}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _other_busy_processes() -> int:
    """Processes outside this run that used CPU in the last moment (a noisy machine)."""
    mine = {os.getpid()}
    busy = 0
    try:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in mine:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] == "R":
                    busy += 1
    except OSError:
        pass
    return busy


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run at tiny sizes: checks that everything works "
                             "(what CI runs; its figures mean nothing)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)}); repeat or "
                             "comma-separate")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy on a worker during the throughput benchmark and the "
                             "latency one at 100/s, and on gunicorn during the API one; "
                             "writes bench/results/profile-*")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="where to write the JSON results (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="deliverer worker processes (the Procfile's worker line, once "
                             "per core by default)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="WORKER_CONCURRENCY for the worker line (default: the "
                             "Procfile's)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the bench database and the temp dir (logs) for diagnosis")
    parser.add_argument("--rst", action="store_true",
                        help="also print the table as an RST grid table (for BENCHMARKS.rst)")
    args = parser.parse_args(argv)
    names: list[str] = []
    for item in args.only:
        names.extend(n.strip() for n in item.split(",") if n.strip())
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; "
                     f"choose from {', '.join(BENCHMARKS)}")
    args.names = names or list(BENCHMARKS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (CI timeout, a parent giving up) still runs the clean-up below.
    signal.signal(signal.SIGTERM, _interrupt)
    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full",
        "machine": _machine(), "git": _git(), "load_before": _load(),
        "busy_processes_before": _other_busy_processes(),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    results: list[Result] = []
    env = BenchEnv(keep=args.keep)
    meta["database"] = env.db_name
    meta["redis_db"] = env.redis_db
    meta["broker"] = "rabbitmq" if env.rabbitmq_vhost else "redis"
    print(f"bench: database {env.db_name}, Redis index {env.redis_db}, broker "
          f"{meta['broker']}, temp {env.tmp}", flush=True)
    try:
        env.migrate()
        ctx = Ctx(env=env, smoke=args.smoke, results_dir=args.output.parent,
                  profile=args.profile, workers=args.workers, concurrency=args.concurrency)
        for name in args.names:
            module = BENCHMARKS[name]
            print(f"\n== {name}: {module.TITLE}", flush=True)
            t0 = time.monotonic()
            try:
                result = module.run(ctx)
                if not all(result.checks.values()):
                    failed = [k for k, ok in result.checks.items() if not ok]
                    result.status = "error"
                    result.error = "checks failed: " + ", ".join(failed)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                result = Result(name, module.TITLE, status="error",
                                error=f"{type(exc).__name__}: {exc}")
                result.details["traceback"] = traceback.format_exc()
                print(result.details["traceback"], file=sys.stderr, flush=True)
            finally:
                env.procs.stop_all()
            result.seconds = time.monotonic() - t0
            results.append(result)
            print(render_text(table([result])), flush=True)
            if result.status != "ok":
                print(f"   {result.error}", flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        env.close()
        meta["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        meta["load_after"] = _load()
        meta["logs"] = str(env.tmp) if args.keep else None
        args.output.parent.mkdir(parents=True, exist_ok=True)
        document = {"meta": meta, "results": {r.name: r.as_dict() for r in results}}
        args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    rows = table(results)
    print("\n" + render_text(rows))
    if args.rst:
        print("\n" + render_rst(rows))
    print(f"\nresults: {args.output}")
    return 0 if results and all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
