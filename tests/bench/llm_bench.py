"""The gateway and the llm service against a fast fake OpenAI upstream, through an API key.

Every process is a real one (uvicorn, one worker each, uvloop, libs.server's protocol) on
loopback, on embedded PostgreSQL and Redis. Reports requests/s and p50/p99 at concurrency 1 and 16,
non-streamed and streamed (20 chunks), and each process's resident memory.

    python -m tests.bench.llm_bench [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.bench import load
from tests.bench.stack import Stack, stack

# generous limits: the benchmark measures throughput, not the limiter refusing it
LIMITS = {
    "GATEWAY_RATE_LIMIT_KEY_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_USER_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_ORG_RPM": "100000000",
}
BODY = {"model": "default", "messages": [{"role": "user", "content": "Say hello"}]}


def models_yaml(upstream: str, folder: Path, http_client: str = "auto") -> Path:
    """The bench's models file; ``http_client`` is the llm's provider pool (auto: aiohttp)."""
    path = folder / "models.yaml"
    path.write_text(
        json.dumps(
            {
                "providers": {
                    "fake": {
                        "kind": "openai",
                        "base_url": f"{upstream}/v1",
                        "api_key": "sk-bench",
                        # the gateway's auto is aiohttp; the providers name it so
                        "http_pool": "aiohttp" if http_client == "auto" else http_client,
                    }
                },
                "models": {
                    "default": {
                        "price": {"input": 0.15, "output": 0.6},
                        "targets": [{"provider": "fake", "model": "gpt-4o-mini"}],
                    }
                },
            }
        )
    )
    return path


def api_key(gateway: str) -> str:
    """Sign up through the gateway and create an API key with ``llm:use``."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    with httpx.Client(base_url=gateway, timeout=30) as client:
        r = client.post("/v1/auth/register", json={"email": email, "password": password})
        r.raise_for_status()
        r = client.post("/v1/auth/login", json={"email": email, "password": password})
        r.raise_for_status()
        token = r.json()["access_token"]
        r = client.post(
            "/v1/api-keys",
            json={"name": "bench", "scopes": ["llm:use"]},
            headers={"authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
        return str(r.json()["key"])


def _stream_ok(status: int, body: bytes) -> bool:
    return status == 200 and body.rstrip().endswith(b"data: [DONE]")


def cpu_probe(procs: dict[str, psutil.Process]) -> Callable[[], dict[str, float]]:
    """CPU seconds (user + system) used so far by each process, the load generator included."""
    me = psutil.Process()

    def probe() -> dict[str, float]:
        out = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
        out["load generator"] = sum(me.cpu_times()[:2])
        return out

    return probe


async def measure(
    gateway: str,
    key: str,
    duration: float,
    probe: Callable[[], dict[str, float]] | None = None,
) -> list[load.Result]:
    headers = {"authorization": f"Bearer {key}"}
    url = f"{gateway}/v1/chat/completions"
    results = []
    for concurrency in (1, 16):
        results.append(
            await load.run(
                "chat",
                url,
                method="POST",
                json=BODY,
                headers=headers,
                concurrency=concurrency,
                duration=duration,
                cpu_probe=probe,
            )
        )
        results.append(
            await load.run(
                "chat stream (20 chunks)",
                url,
                method="POST",
                json={**BODY, "stream": True},
                headers=headers,
                concurrency=concurrency,
                duration=duration,
                check=_stream_ok,
                cpu_probe=probe,
            )
        )
    return results


def report(results: list[load.Result], memory: dict[str, tuple[float, float]]) -> str:
    lines = [
        "| Request | Concurrency | Requests/s | p50 ms | p99 ms | Errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        row = f"| {r.name} | {r.concurrency} | {r.rps:,.0f} | {r.p50:.2f} | {r.p99:.2f}"
        lines.append(f"{row} | {r.errors} |")
    names = list(results[0].cpu_ms) if results and results[0].cpu_ms else []
    if names:
        # steadier than requests/s when other work shares the machine
        lines += [
            "",
            "| CPU ms per request | Concurrency | " + " | ".join(names) + " | total |",
            "|---|---:|" + "---:|" * (len(names) + 1),
        ]
        for r in results:
            cells = " | ".join(f"{r.cpu_ms[n]:.2f}" for n in names)
            total = sum(r.cpu_ms.values())
            lines.append(f"| {r.name} | {r.concurrency} | {cells} | {total:.2f} |")
    lines += ["", "| Process | RSS idle MiB | RSS after load MiB |", "|---|---:|---:|"]
    for name, (idle, after) in memory.items():
        lines.append(f"| {name} | {idle:.0f} | {after:.0f} |")
    return "\n".join(lines)


def run_bench(
    duration: float,
    log_level: str = "WARNING",
    http_client: str = "auto",
    llm_client: str | None = None,
) -> str:
    """``http_client``: the gateway's upstream client, and the llm's pool unless ``llm_client``."""
    with stack() as s, tempfile.TemporaryDirectory() as tmp:
        # WARNING: no access line per request; INFO (the default in deployments) adds them
        s.env["LOG_LEVEL"] = log_level
        upstream = s.start_fake_openai()
        config = models_yaml(upstream.url, Path(tmp), llm_client or http_client)
        procs = _start_services(s, config, http_client)
        idle = {name: p.rss_mb() for name, p in procs.items()}
        key = api_key(procs["gateway"].url)
        watched = {
            "gateway": psutil.Process(procs["gateway"].popen.pid),
            "llm": psutil.Process(procs["llm"].popen.pid),
            "upstream": psutil.Process(upstream.popen.pid),
        }
        for child in psutil.Process().children(recursive=True):
            if "redis" in child.name():  # the embedded Redis (rate limits, usage queue)
                watched["redis"] = child
        results = asyncio.run(measure(procs["gateway"].url, key, duration, cpu_probe(watched)))
        memory = {name: (idle[name], p.rss_mb()) for name, p in procs.items()}
        return report(results, memory)


def _start_services(s: Stack, config: Path, http_client: str = "auto") -> dict[str, Any]:
    auth = s.start("auth", "services.auth.app:app")
    llm = s.start("llm", "services.llm.app:app", env={"LLM_MODELS_CONFIG": str(config)})
    gateway = s.start(
        "gateway",
        "gateway.app:app",
        env={
            "GATEWAY_AUTH_URL": auth.url,
            "GATEWAY_LLM_URL": llm.url,
            "GATEWAY_UPSTREAM_CLIENT": http_client,
            **LIMITS,
        },
    )
    return {"gateway": gateway, "llm": llm, "auth": auth}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.llm_bench")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument(
        "--log-level", default="WARNING", help="LOG_LEVEL of the processes (INFO: access lines)"
    )
    parser.add_argument(
        "--http-client",
        default="auto",
        choices=["auto", "aiohttp"],
        help="the gateway's and the llm's HTTP client (GATEWAY_UPSTREAM_CLIENT, http_pool)",
    )
    parser.add_argument(
        "--llm-client",
        default=None,
        choices=["auto", "aiohttp"],
        help="the llm's provider pool when it differs from --http-client",
    )
    args = parser.parse_args()
    print(run_bench(args.duration, args.log_level, args.http_client, args.llm_client))


if __name__ == "__main__":
    main()
