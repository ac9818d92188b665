"""Metrics are served on a listener of each process's own, never on its public port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq.constants import health_check_key_suffix
from redis import Redis

from deploy.local.run import banner, plan_from_env
from libs.embedded import free_port, port_open
from libs.queue import queue_name
from libs.settings import ServiceSettings
from libs.testing import Infra, client_for
from services.rag.app import build_app as build_rag

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_until_answering(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"exited with {proc.returncode}:\n{out[-3000:]}")
        try:
            _get(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def _entrypoint(*argv: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m deploy.entrypoint ...`` as the image runs it, stopped with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.entrypoint", *argv],
        env={**os.environ, "AISTACK_BIND": "127.0.0.1", "LOG_LEVEL": "WARNING", **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_metrics_port_defaults_to_the_process_port_plus_an_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("METRICS_PORT", "WORKER_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = ServiceSettings(port=8002)
    assert settings.metrics_listen_port() == 9002
    assert settings.metrics_listen_port(worker=True) == 9012
    assert ServiceSettings(port=8002, metrics_port=0).metrics_listen_port() is None
    assert ServiceSettings(port=8002, worker_metrics_port=9100).metrics_listen_port(True) == 9100
    monkeypatch.setenv("METRICS_PORT", "")  # empty: off, as 0
    assert ServiceSettings().metrics_listen_port() is None
    # the shared variable is overridden by one process's own (LLM_METRICS_PORT)
    monkeypatch.setenv("METRICS_PORT", "0")
    monkeypatch.setenv("AISTACK_METRICS_PORT", "9555")
    assert ServiceSettings().metrics_listen_port() == 9555


async def test_an_app_serves_metrics_on_its_own_listener_and_stops_it(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("RAG_METRICS_PORT", str(port))
    app = build_rag()
    async with client_for(app) as client:
        await client.get("/v1/vector_stores")  # a 401, counted
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert any(
            line.startswith("aistack_http_requests_total{")
            and 'service="rag"' in line
            and 'route="/v1/vector_stores"' in line
            for line in text.splitlines()
        ), text[:2000]
        resp = await client.get("/metrics")
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"
    assert not port_open("127.0.0.1", port)


async def test_an_app_whose_metrics_port_is_taken_does_not_start(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("RAG_METRICS_PORT", str(taken.getsockname()[1]))
        with pytest.raises(OSError, match="METRICS_PORT"):
            async with client_for(build_rag()):
                pass


def test_the_gateway_process_serves_metrics_apart_from_its_public_port(infra: Infra) -> None:
    port, metrics_port = free_port(), free_port()
    env = {"GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": str(metrics_port)}
    with _entrypoint("serve", "gateway", env=env) as proc:
        _wait_until_answering(f"http://127.0.0.1:{port}/health", proc)
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 404, body
        assert '"code":"not_found"' in body.replace(" ", "")
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        # the 404 just answered on the public port is counted, here
        assert any(
            line.startswith("aistack_http_requests_total{")
            and 'service="gateway"' in line
            and 'status="404"' in line
            for line in text.splitlines()
        ), text[:2000]


def test_a_worker_process_serves_its_metrics(infra: Infra) -> None:
    metrics_port = free_port()
    env = {"BILLING_WORKER_METRICS_PORT": str(metrics_port)}
    with _entrypoint("worker", "billing", env=env) as proc:
        _wait_until_answering(f"http://127.0.0.1:{metrics_port}/metrics", proc)
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert "# TYPE aistack_jobs_total counter" in text
        assert "process_resident_memory_bytes" in text
        # polling its queue (arq's health key) before it is asked to stop
        health = queue_name("billing") + health_check_key_suffix
        with Redis.from_url(infra.redis_url) as redis:
            deadline = time.monotonic() + 60
            while not redis.exists(health) and time.monotonic() < deadline:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not port_open("127.0.0.1", metrics_port)


def test_make_run_gives_every_process_its_metrics_port() -> None:
    plan = plan_from_env({"LLM_PORT": "18002", "RAG_METRICS_PORT": "9999"})
    assert plan.metrics == {
        "gateway": 9000,
        "auth": 9001,
        "llm": 19002,
        "rag": 9999,
        "jobs": 9004,
        "billing": 9005,
        # every service's jobs in one worker process
        "worker": 9010,
    }
    env = plan.metrics_env()
    assert env["LLM_METRICS_PORT"] == "19002" and env["AISTACK_WORKER_METRICS_PORT"] == "9010"
    assert env["GATEWAY_HOST"] == plan.host and "GATEWAY_WORKER_METRICS_PORT" not in env
    shown = banner(plan, "http://localhost:8000", 1.0)
    assert "Metrics  /metrics on ports: gateway 9000, auth 9001, llm 19002" in shown
    assert shown.rstrip().splitlines()[-2].endswith("billing 9005, worker 9010")
    # one worker per service, as compose runs them: each on its service's port + 1010
    each = plan_from_env({"LLM_PORT": "18002", "AISTACK_WORKERS": "per-service"})
    assert {k: v for k, v in each.metrics.items() if k.endswith("worker")} == {
        "auth-worker": 9011,
        "llm-worker": 19012,
        "rag-worker": 9013,
        "jobs-worker": 9014,
        "billing-worker": 9015,
    }
    assert each.metrics_env()["LLM_WORKER_METRICS_PORT"] == "19012"
    # METRICS_PORT=0 turns them off (a non-zero shared one is for containers, not one host)
    off = plan_from_env({"METRICS_PORT": "0", "WORKER_METRICS_PORT": "0"})
    assert off.metrics == {} and off.metrics_env()["AUTH_METRICS_PORT"] == "0"
    assert "Metrics" not in banner(off, "http://localhost:8000", 1.0)
    workers_only = plan_from_env({"METRICS_PORT": "0", "AISTACK_WORKERS": "1"})
    assert set(workers_only.metrics) == {"worker"}
