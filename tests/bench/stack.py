"""Start real aistack processes (and fakes) on loopback for benchmarks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from libs.embedded import free_port
from libs.migrations import upgrade_all
from libs.testing import Infra, start_infra

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes]
    # its Prometheus listener, when it was given one
    metrics_url: str | None = None

    def rss_mb(self) -> float:
        """Resident memory of the process, in MiB."""
        return psutil.Process(self.popen.pid).memory_info().rss / 2**20


@dataclass
class Stack:
    infra: Infra
    env: dict[str, str]
    logs: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(
        self,
        name: str,
        app: str,
        *,
        factory: bool = True,
        env: dict[str, str] | None = None,
        http: str = "libs.server:HttpProtocol",
        cwd: Path | None = None,
        metrics_prefix: str | None = None,
    ) -> Proc:
        """Run ``app`` under uvicorn (one worker, uvloop, the apps' HTTP protocol as deployed;
        ``http="httptools"`` for stand-ins of outside servers) and wait for it to answer.
        ``cwd``: another source tree to import the app from (a before/after comparison).
        With ``metrics_prefix`` (``LLM``), its metrics listener gets a free port too."""
        port = free_port()
        env = dict(env or {})
        metrics_url = None
        if metrics_prefix is not None:
            metrics_port = free_port()
            env[f"{metrics_prefix}_METRICS_PORT"] = str(metrics_port)
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            *(["--factory"] if factory else []),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            http,
        ]
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        popen = subprocess.Popen(
            cmd, env={**self.env, **env}, cwd=cwd or ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        proc = Proc(name, f"http://127.0.0.1:{port}", popen, metrics_url)
        self.procs[name] = proc
        _wait_for(proc, self.logs / f"{name}.log")
        return proc

    def start_worker(self, service: str, env: dict[str, str] | None = None) -> Proc:
        """``python -m libs.worker <service>``, up once its metrics listener answers."""
        name = f"{service}-worker"
        metrics_port = free_port()
        worker_env = {
            **self.env,
            **(env or {}),
            f"{service.upper()}_WORKER_METRICS_PORT": str(metrics_port),
        }
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        popen = subprocess.Popen(
            [sys.executable, "-m", "libs.worker", service],
            env=worker_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{metrics_port}"
        proc = Proc(name, url, popen, f"{url}/metrics")
        self.procs[name] = proc
        _wait_for(proc, self.logs / f"{name}.log")  # any path of the listener answers
        return proc

    def start_fake_openai(self, name: str = "fake-openai") -> Proc:
        """The bench's fake OpenAI upstream (:mod:`tests.bench.fake_openai`, its own server)."""
        port = free_port()
        cmd = [sys.executable, "-m", "tests.bench.fake_openai", "--port", str(port)]
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        popen = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        proc = Proc(name, f"http://127.0.0.1:{port}", popen)
        self.procs[name] = proc
        _wait_for(proc, self.logs / f"{name}.log")
        return proc

    def stop_proc(self, name: str) -> None:
        """Stop one process (and forget it)."""
        proc = self.procs.pop(name)
        proc.popen.terminate()
        try:
            proc.popen.wait(10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.popen.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)
            if proc.popen.poll() is None:
                proc.popen.kill()
        self.infra.stop()


def _wait_for(proc: Proc, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{proc.url}/health", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up (a bare fake has no /health)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not start within {timeout}s")


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    """Embedded PostgreSQL and Redis with every migration applied, torn down at the end."""
    with tempfile.TemporaryDirectory(prefix="aistack-bench-") as tmp:
        root = Path(tmp)
        infra = start_infra(root)
        upgrade_all(infra.database_url)
        env = {
            **os.environ,
            "DATABASE_URL": infra.database_url,
            "REDIS_URL": infra.redis_url,
            "ENVIRONMENT": "development",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            # no metrics listeners on their default ports (9000 and up: a `make run` on this
            # machine has them); a process that should have one is given a free port
            "METRICS_PORT": "0",
            "WORKER_METRICS_PORT": "0",
        }
        s = Stack(infra, env, root)
        try:
            yield s
        finally:
            s.stop()
