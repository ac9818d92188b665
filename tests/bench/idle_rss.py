"""``make run``'s idle memory (issue 15: ≤ 700 MiB): ``make bench BENCH_ARGS=idle`` or
``python -m tests.bench.idle_rss [--settle 30] [--env AISTACK_APPS=per-service]``.

Starts ``python -m deploy.local.run`` on free ports with its own data directory (embedded
PostgreSQL and Redis), waits for its "ready" banner and ``--settle`` seconds more with
nothing sent, then reads every process of the stack: RSS (what ``ps`` shows; shared library
pages count in each process) and PSS (shared pages split between the processes that map
them: what the stack really takes). Ctrl-C's the runner at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from libs.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
APPS = ("gateway", "auth", "llm", "rag", "jobs", "billing")


def _name(proc: psutil.Process) -> str:
    cmd = proc.cmdline()
    text = " ".join(cmd)
    if "postgres" in proc.name() or "postgres" in text.split(" ")[0]:
        return "postgres"
    if "redis" in proc.name():
        return "redis"
    if "deploy.local.run" in text:
        return "runner"
    if "deploy.local.mailsink" in text:
        return "mail"
    if "libs.worker" in text:
        return "worker"
    if "deploy.local.apps" in text:
        return "apps"
    for app in APPS:
        if f"{app}.app:app" in text:
            return app
    return proc.name()


def measure(settle: float, extra_env: dict[str, str]) -> list[tuple[str, float, float]]:
    """(process name, RSS MiB, PSS MiB) of every process of an idle ``make run``."""
    with tempfile.TemporaryDirectory(prefix="aistack-idle-") as tmp:
        env = {**os.environ, "AISTACK_DATA_DIR": tmp, "LOG_LEVEL": "WARNING", **extra_env}
        for key in ("DATABASE_URL", "REDIS_URL"):
            env.pop(key, None)
        env["AISTACK_EMBEDDED_PG_PORT"] = str(free_port())
        env["AISTACK_EMBEDDED_REDIS_PORT"] = str(free_port())
        env["AISTACK_MAIL_PORT"] = str(free_port())
        env["GATEWAY_PORT"] = str(free_port())
        for app in APPS:
            env[f"{app.upper()}_PORT"] = str(free_port())
            env[f"{app.upper()}_METRICS_PORT"] = str(free_port())
        env["AISTACK_WORKER_METRICS_PORT"] = str(free_port())
        runner = subprocess.Popen(
            [sys.executable, "-m", "deploy.local.run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        out: list[str] = []

        def read() -> None:
            assert runner.stdout is not None
            for line in runner.stdout:
                out.append(line)
                if "Press Ctrl-C to stop." in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            if not ready.wait(300):
                raise RuntimeError("make run did not get ready:\n" + "".join(out[-40:]))
            time.sleep(settle)
            rows = []
            top = psutil.Process(runner.pid)
            for proc in [top, *top.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                    rows.append((_name(proc), info.rss / 2**20, info.pss / 2**20))
                except psutil.Error:
                    continue
            return rows
        finally:
            runner.send_signal(signal.SIGINT)
            try:
                runner.wait(60)
            except subprocess.TimeoutExpired:
                runner.kill()


def table(rows: list[tuple[str, float, float]]) -> str:
    by: dict[str, list[float]] = {}
    for name, rss, pss in rows:
        acc = by.setdefault(name, [0.0, 0.0, 0.0])
        acc[0] += rss
        acc[1] += pss
        acc[2] += 1
    lines = ["| process | RSS MiB | PSS MiB |", "|---|---:|---:|"]
    for name, (rss, pss, n) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        label = f"{name} ({n:.0f} processes)" if n > 1 else name
        lines.append(f"| {label} | {rss:.0f} | {pss:.0f} |")
    ours = [r for r in rows if r[0] != "postgres"]
    lines.append(
        f"| **aistack's processes (all but PostgreSQL)** | **{sum(r[1] for r in ours):.0f}** "
        f"| **{sum(r[2] for r in ours):.0f}** |"
    )
    pg = [r for r in rows if r[0] == "postgres"]
    if pg:
        lines.append(
            f"| PostgreSQL, all its processes | {sum(r[1] for r in pg):.0f} "
            f"| {sum(r[2] for r in pg):.0f} |"
        )
    return "\n".join(lines)


def run_bench(duration: float) -> str:
    """``make bench``: 30 s after "ready" (``duration`` is for throughput benches)."""
    return table(measure(30.0, {}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.idle_rss")
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the runner")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    print(table(measure(args.settle, extra)))


if __name__ == "__main__":
    main()
