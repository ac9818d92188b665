"""The Batch API's throughput (``make bench BENCH_ARGS=batch``; docs/benchmarks.md, "Batches").

Real processes on embedded PostgreSQL and Redis: the fast fake OpenAI upstream
(:mod:`tests.bench.fake_openai`), the llm on it, rag (files) and the jobs app and worker
(``python -m libs.worker jobs``, ``JOBS_BATCH_CONCURRENCY``). One chat request (sampled: never
a cache answer), as the owner with the internal token a batch's requests carry, is

- sent **directly** to the llm's ``/v1/chat/completions`` by ``--concurrency`` clients: the
  bench's load generator for ``--duration`` s (the least client CPU), and ``--lines`` times
  over ``libs.transport.Origin`` with a batch line's headers, the HTTP client the batch
  worker uses;
- run ``--lines`` times as **one batch**: the JSONL file uploaded to rag, then timed from
  ``POST /v1/batches`` until the batch is ``completed`` (validation, every line, both files).

``--rounds`` interleaved rounds; the comparison takes the best of each kind (issue 15's
target: the batch at ≥ 80 % of the direct requests/s). CPU ms per request or line of each
process (the stack's, PostgreSQL's backends and Redis) says where a batch's extra work goes.

    python -m tests.bench.batch_bench [--lines 10000] [--concurrency 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import uvloop

from libs.identity import Principal
from libs.testing import auth_headers, principal
from libs.transport import Origin, Timeouts
from tests.bench import load
from tests.bench.llm_bench import models_yaml
from tests.bench.stack import Stack, stack

# a sampled request (temperature > 0): never answered from the llm's response cache
BODY = {
    "model": "default",
    "temperature": 0.7,
    "messages": [{"role": "user", "content": "Say hello"}],
}


async def direct(llm: str, who: Principal, duration: float, concurrency: int) -> float:
    """Requests/s of the chat request sent straight to the llm by ``concurrency`` clients of
    the bench's load generator (the least client CPU per request)."""
    result = await load.run(
        "direct",
        f"{llm}/v1/chat/completions",
        method="POST",
        json=BODY,
        headers=auth_headers(who),
        concurrency=concurrency,
        duration=duration,
    )
    assert result.errors == 0, f"{result.errors} direct requests failed"
    return result.rps


async def direct_same_client(llm: str, who: Principal, lines: int, concurrency: int) -> float:
    """Requests/s of ``lines`` chat requests sent straight to the llm by ``concurrency``
    clients over the HTTP client a batch's worker uses (libs.transport.Origin, on uvloop)."""
    rate: float = await asyncio.to_thread(uvloop.run, _same_client(llm, who, lines, concurrency))
    return rate


async def _same_client(llm: str, who: Principal, lines: int, concurrency: int) -> float:
    client = Origin(llm, Timeouts(connect=5, read=60, write=30, pool=60))
    headers = [(k.encode(), v.encode()) for k, v in auth_headers(who).items()]
    headers.append((b"content-type", b"application/json"))
    headers.append((b"x-aistack-batch", b"batch_bench"))  # as a batch's line (usage kind)
    payload = orjson.dumps(BODY)
    left = lines
    failures = 0

    async def one() -> None:
        nonlocal left, failures
        while left > 0:
            left -= 1
            resp = await client.post("/v1/chat/completions", headers, payload)
            failures += resp.status != 200

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    took = time.perf_counter() - start
    await client.aclose()
    assert failures == 0, f"{failures} direct requests failed"
    return lines / took


async def batch(rag: str, jobs: str, who: Principal, lines: int) -> tuple[float, dict[str, Any]]:
    """Requests/s of the same requests as one batch, create to completed."""
    data = b"".join(
        orjson.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": BODY,
            }
        )
        + b"\n"
        for i in range(lines)
    )
    async with httpx.AsyncClient(timeout=120) as http:
        r = await http.post(
            f"{rag}/v1/files",
            headers=auth_headers(who),
            data={"purpose": "batch"},
            files={"file": ("requests.jsonl", data, "application/jsonl")},
        )
        r.raise_for_status()
        file_id = r.json()["id"]
        start = time.perf_counter()
        r = await http.post(
            f"{jobs}/v1/batches",
            headers=auth_headers(who),
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        r.raise_for_status()
        batch_id = r.json()["id"]
        while True:
            await asyncio.sleep(0.05)
            r = await http.get(f"{jobs}/v1/batches/{batch_id}", headers=auth_headers(who))
            b = r.json()
            if b["status"] in ("completed", "failed", "expired", "cancelled"):
                break
        took = time.perf_counter() - start
    assert b["status"] == "completed", b
    assert b["request_counts"]["completed"] == lines, b["request_counts"]
    return lines / took, b


def cpu_seconds(s: Stack) -> dict[str, float]:
    """CPU seconds (user + system) each of the stack's processes has used so far."""
    out = {}
    for name, proc in s.procs.items():
        t = psutil.Process(proc.popen.pid).cpu_times()
        out[name] = t.user + t.system
    pg, redis = s.infra.postgres, s.infra.redis
    if pg is not None:  # the postmaster and its backends (ended backends' CPU is lost)
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            top = psutil.Process(int((pg.pgdata / "postmaster.pid").read_text().split()[0]))
            out["postgres"] = sum(
                sum(p.cpu_times()[:2]) for p in [top, *top.children()] if p.is_running()
            )
    if redis is not None and redis.proc is not None:
        with contextlib.suppress(psutil.Error):
            out["redis"] = sum(psutil.Process(redis.proc.pid).cpu_times()[:2])
    return out


def llm_handling(metrics_url: str) -> tuple[float, float]:
    """(sum of seconds, count) of the llm's chat completions, from its own latency histogram
    (request received → body sent): the llm's share of a request's time, wire and client
    excluded."""
    text = httpx.get(metrics_url, timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if "aistack_http_request_duration_seconds" in line and "/v1/chat/completions" in line:
            if line.startswith("aistack_http_request_duration_seconds_sum"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("aistack_http_request_duration_seconds_count"):
                count += float(line.rsplit(" ", 1)[1])
    return total, count


def _mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float:
    n = after[1] - before[1]
    return 1000 * (after[0] - before[0]) / n if n else float("nan")


def cpu_ms_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: 1000 * (after[k] - before[k]) / n for k in before if k in after}


def run_bench(duration: float, lines: int = 10_000, concurrency: int = 16, rounds: int = 2) -> str:
    with stack() as s, tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_measure(s, Path(tmp), lines, concurrency, max(duration, 10.0), rounds))


async def _measure(
    s: Stack, tmp: Path, lines: int, concurrency: int, duration: float, rounds: int
) -> str:
    upstream = s.start_fake_openai()
    config = models_yaml(upstream.url, tmp)
    llm = s.start(
        "llm", "services.llm.app:app", env={"LLM_MODELS_CONFIG": str(config)}, metrics_prefix="LLM"
    )
    rag = s.start("rag", "services.rag.app:app", env={"RAG_STORAGE_DIR": str(tmp / "files")})
    env = {
        "JOBS_RAG_URL": rag.url,
        "JOBS_LLM_URL": llm.url,
        "JOBS_BATCH_CONCURRENCY": str(concurrency),
    }
    jobs = s.start("jobs", "services.jobs.app:app", env=env)
    worker = s.start_worker("jobs", env=env)
    who = principal()
    lean: list[float] = []
    same: list[float] = []
    batched: list[float] = []
    b: dict[str, Any] = {}
    # interleaved rounds, the best of each kept: the machine is shared, and a slow moment
    # should not decide the comparison either way
    assert llm.metrics_url is not None
    metrics = llm.metrics_url
    llm_direct = llm_batch = float("nan")
    cpu_direct: dict[str, float] = {}
    cpu_batch: dict[str, float] = {}
    for _ in range(rounds):
        lean.append(await direct(llm.url, who, duration, concurrency))
        before, handled = cpu_seconds(s), llm_handling(metrics)
        same.append(await direct_same_client(llm.url, who, lines, concurrency))
        cpu_direct = cpu_ms_per(before, cpu_seconds(s), lines)
        llm_direct = _mean_ms(handled, llm_handling(metrics))
        before, handled = cpu_seconds(s), llm_handling(metrics)
        rate, b = await batch(rag.url, jobs.url, who, lines)
        cpu_batch = cpu_ms_per(before, cpu_seconds(s), lines)
        llm_batch = _mean_ms(handled, llm_handling(metrics))
        batched.append(rate)

    def per_request(cpu: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v >= 0.005)

    def figures(xs: list[float]) -> str:
        return " / ".join(f"{x:,.0f}" for x in xs) + " requests/s"

    best = max(batched)
    return "\n".join(
        [
            "| measure (each round's figure; the comparison takes the best of each) | figure |",
            "|---|---|",
            f"| the chat request straight to the llm, {concurrency} clients of the bench's "
            f"load generator, {duration:.0f} s | {figures(lean)} |",
            f"| {lines:,} such requests straight to the llm, {concurrency} clients over "
            f"libs.transport.Origin with a batch line's headers (the batch worker's client) "
            f"| {figures(same)} |",
            f"| the same {lines:,} requests as one batch, JOBS_BATCH_CONCURRENCY={concurrency}, "
            f"create → completed | {figures(batched)} |",
            f"| batch / direct over the same client | {100 * best / max(same):.0f} % |",
            f"| batch / direct from the load generator | {100 * best / max(lean):.0f} % |",
            f"| last batch's phases | validating → in_progress "
            f"{b['in_progress_at'] - b['created_at']} s, in_progress → finalizing "
            f"{b['finalizing_at'] - b['in_progress_at']} s, finalizing → completed "
            f"{b['completed_at'] - b['finalizing_at']} s |",
            f"| CPU ms per request, last direct round over Origin (the bench's own "
            f"client not shown) | {per_request(cpu_direct)} |",
            f"| CPU ms per line, last batch | {per_request(cpu_batch)} |",
            f"| the llm's own time per chat request (its latency histogram), last direct "
            f"round / last batch | {llm_direct:.1f} ms / {llm_batch:.1f} ms |",
            f"| jobs worker RSS after | {worker.rss_mb():.0f} MiB |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.batch_bench")
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(run_bench(args.duration, args.lines, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
