"""``make run`` end to end: every process up with its metrics port, and a clean Ctrl-C exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from libs.embedded import free_port
from libs.testing import Infra

ROOT = Path(__file__).resolve().parents[2]
APPS = ("gateway", "auth", "llm", "rag", "jobs", "billing")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _get_when_listening(url: str, within_s: float = 30) -> tuple[int, str]:
    deadline = time.monotonic() + within_s
    while True:
        try:
            return _get(url)
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_local_stack_serves_metrics_per_process_and_a_ctrl_c_exits_0(
    infra: Infra, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        # the session's servers instead of embedded ones
        "DATABASE_URL": infra.database_url,
        "REDIS_URL": infra.redis_url,
        "AISTACK_DATA_DIR": str(tmp_path),
        "AISTACK_MAIL_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
    }
    # the test session turns metrics listeners off; the runner's own defaults apply here
    env.pop("METRICS_PORT", None)
    env.pop("WORKER_METRICS_PORT", None)
    for name in APPS:
        env[f"{name.upper()}_PORT"] = str(free_port())
        env[f"{name.upper()}_METRICS_PORT"] = str(free_port())
    env["AISTACK_WORKER_METRICS_PORT"] = str(free_port())
    runner = subprocess.Popen(
        [sys.executable, "-m", "deploy.local.run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert runner.stdout is not None
        for line in runner.stdout:
            out.append(line)
            if "Press Ctrl-C to stop." in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), "".join(out[-80:])
        text = "".join(out)
        shown = re.search(r"Metrics  /metrics on ports: (.*)", text)
        assert shown is not None, text[-3000:]
        ports = dict(item.rsplit(" ", 1) for item in shown.group(1).split(", "))
        # every service's jobs in one worker process
        assert set(ports) == {*APPS, "worker"}
        assert ports["worker"] == env["AISTACK_WORKER_METRICS_PORT"]
        for name, port in ports.items():
            # "ready" is the gateway's view of the apps; the worker is not among them and may
            # open its listener a moment later on a busy machine
            status, body = _get_when_listening(f"http://127.0.0.1:{port}/metrics")
            assert status == 200, (name, body[:300])
            assert "process_resident_memory_bytes" in body, name
        gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        status, _ = _get(f"{gateway}/metrics")
        assert status == 404
        started = time.monotonic()
        runner.send_signal(signal.SIGINT)
        assert runner.wait(60) == 0, "".join(out[-60:])
        assert time.monotonic() - started < 30
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            runner.wait(30)
        reader.join(5)
    text = "".join(out)
    assert "SIGINT received" in text
    assert "Traceback" not in text, text[-3000:]
