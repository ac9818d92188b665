"""A worker rides out Redis being gone, at start or while it runs, for longer than arq's own
retry budget (5 connection tries, 1 s apart; none at all once running): it waits, logs once,
and runs the jobs queued after Redis is back, instead of exiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.worker import func
from redis.asyncio import Redis

from libs.embedded import EmbeddedRedis
from libs.queue import enqueue_now
from libs.worker import Worker, worker_settings
from tests.support.faults.redis_restart import own_redis, start, stop

SERVICE = "outagetest"
# arq alone: 5 tries 1 s apart at start, then the worker exits
LONGER_THAN_ARQ_RETRIES_S = 7.0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


class Ran:
    def __init__(self) -> None:
        self.values: list[str] = []
        self.event = asyncio.Event()

    async def note(self, ctx: dict[str, Any], value: str, **_meta: Any) -> None:
        self.values.append(value)
        self.event.set()

    async def wait_for(self, value: str, within: float = 10) -> None:
        deadline = time.monotonic() + within
        while value not in self.values:
            assert time.monotonic() < deadline, f"job {value} did not run: {self.values}"
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), 0.2)


def worker_for(server: EmbeddedRedis, ran: Ran) -> Worker:
    opts = worker_settings(
        SERVICE,
        [func(ran.note, name="note")],
        redis_url=server.url,
        handle_signals=False,
        poll_delay=0.05,
    )
    return Worker(**opts)


async def submit(server: EmbeddedRedis, value: str) -> None:
    client = Redis.from_url(server.url)
    try:
        await enqueue_now(client, service=SERVICE, function="note", args=[value])
    finally:
        await client.aclose()


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "aistack.worker" and "Redis" in r.getMessage()
    ]


async def test_worker_waits_out_a_redis_outage_and_keeps_working(
    server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aistack.worker")
    ran = Ran()
    worker = worker_for(server, ran)
    task = asyncio.create_task(worker.async_run())
    try:
        await submit(server, "before")
        await ran.wait_for("before")

        await stop(server)
        await asyncio.sleep(LONGER_THAN_ARQ_RETRIES_S)
        assert not task.done(), task.exception() if task.done() else None
        await start(server)

        await submit(server, "after")
        await ran.wait_for("after")
        assert ran.values == ["before", "after"]
        # one line when it went, one when it came back (logged when the poll that found the
        # job returns, which may be just after the job ran): not one per poll
        for _ in range(100):
            if len(lines := redis_warnings(caplog)) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(lines) == 2, lines
        assert "Redis unreachable" in lines[0] and "reachable again" in lines[1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


async def test_worker_started_while_redis_is_down_waits_for_it(
    server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aistack.worker")
    await stop(server)
    ran = Ran()
    started: list[bool] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        started.append(True)

    worker = Worker(
        **worker_settings(
            SERVICE,
            [func(ran.note, name="note")],
            redis_url=server.url,
            handle_signals=False,
            poll_delay=0.05,
            on_startup=on_startup,
        )
    )
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(LONGER_THAN_ARQ_RETRIES_S)
        assert not task.done(), task.exception() if task.done() else None
        assert not started  # nothing runs until it has Redis
        await start(server)
        await submit(server, "first")
        await ran.wait_for("first")
        assert started == [True]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


async def test_worker_stops_cleanly_while_redis_is_down(server: EmbeddedRedis) -> None:
    shut: list[bool] = []

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        shut.append(True)

    ran = Ran()
    worker = Worker(
        **worker_settings(
            SERVICE,
            [func(ran.note, name="note")],
            redis_url=server.url,
            handle_signals=False,
            poll_delay=0.05,
            on_shutdown=on_shutdown,
        )
    )
    task = asyncio.create_task(worker.async_run())
    await submit(server, "one")
    await ran.wait_for("one")
    await stop(server)
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.wait_for(worker.close(), 10)
    # the service's own resources are released even though Redis could not be told
    assert shut == [True]
