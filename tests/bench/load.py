"""A small closed-loop load generator: N concurrent clients, each sending back to back.

aiohttp's client costs less CPU per request than httpx, which matters when the load
generator shares two cores with the processes it measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Result:
    """Throughput and latency of one run."""

    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    # CPU time per measured request, in ms, by process (when a probe was given)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-th percentile latency in milliseconds (q in 0..100)."""
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        k = max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))
        return data[k]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")


Check = Callable[[int, bytes], bool]


def _ok(status: int, body: bytes) -> bool:
    return status == 200


async def run(
    name: str,
    url: str,
    *,
    method: str = "GET",
    json: Any = None,
    headers: dict[str, str] | None = None,
    concurrency: int = 1,
    duration: float = 5.0,
    warmup: float = 1.0,
    check: Check = _ok,
    cpu_probe: Callable[[], dict[str, float]] | None = None,
) -> Result:
    """Send requests from ``concurrency`` clients for ``duration`` seconds after a warm-up.

    ``cpu_probe`` returns CPU seconds used so far by each process of interest; read at the
    start and end of the measured window, it gives CPU time per request.
    """
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    errors = 0
    count = 0
    measuring = False
    stop_at = 0.0
    began = float("inf")

    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal errors, count
            while True:
                now = time.perf_counter()
                if measuring and now >= stop_at:
                    return
                start = time.perf_counter()
                try:
                    async with session.request(method, url, json=json, headers=headers) as resp:
                        body = await resp.read()
                        good = check(resp.status, body)
                except aiohttp.ClientError:
                    good = False
                elapsed = (time.perf_counter() - start) * 1000
                if measuring:
                    count += 1
                    if not good:
                        errors += 1
                    elif start >= began:
                        # latencies of requests sent in the window only: one sent during the
                        # warm-up (a cold start's connection storm) is not this window's
                        latencies.append(elapsed)

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        cpu_before = cpu_probe() if cpu_probe else {}
        measuring = True
        began = time.perf_counter()
        stop_at = began + duration
        await asyncio.gather(*tasks)
        took = time.perf_counter() - began
        cpu_after = cpu_probe() if cpu_probe else {}
    cpu_ms = {
        name: 1000 * (cpu_after[name] - cpu_before[name]) / max(count, 1) for name in cpu_after
    }
    return Result(name, concurrency, count, errors, took, latencies, cpu_ms)
