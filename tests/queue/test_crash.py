"""A worker killed mid-job (SIGKILL): the job runs again, as its next attempt, within the
worker lease, and finishes exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from libs.queue import enqueue_now
from libs.testing import Infra
from tests.support.crash_worker import SERVICE, crashy
from tests.support.workers import events_for, make_worker, run_burst

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 1.0


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def wait_for_line(log: Path, line: str, within: float) -> None:
    deadline = time.monotonic() + within
    while line not in _lines(log):
        assert time.monotonic() < deadline, f"{line!r} not in {log}"
        await asyncio.sleep(0.05)


async def test_a_worker_killed_mid_job_has_it_run_again_and_finish_once(
    infra: Infra, redis: Redis, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    name = uuid.uuid4().hex[:8]
    jid = await enqueue_now(
        redis,
        service=SERVICE,
        function="crashy",
        args=[name, str(log)],
        org_id=str(uuid.uuid4()),
    )
    assert jid
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, killed below
        [sys.executable, "-m", "tests.support.crash_worker", infra.redis_url, str(LEASE_S)],
        cwd=ROOT,
        env={**os.environ, "LOG_JSON": "true"},
    )
    try:
        await wait_for_line(log, f"start {name} 1", within=60)
        # mid-job: its running event went out (a job reports it after 50 ms, or with its end)
        for _ in range(100):
            if ("running", 1) in [(e.status, e.attempt) for e in await events_for(redis, jid)]:
                break
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    killed_at = time.monotonic()
    # another worker takes the job over once the dead one's lease lapses
    worker = make_worker(
        infra.redis_url, SERVICE, [crashy], burst=False, lease_s=LEASE_S, poll_delay=0.05
    )
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_for_line(log, f"done {name}", within=30)
        took = time.monotonic() - killed_at
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()
    lines = _lines(log)
    assert lines == [f"start {name} 1", f"start {name} 2", f"done {name}"]
    assert took < LEASE_S + 5, took
    evs = [(e.status, e.attempt) for e in await events_for(redis, jid)]
    assert evs[0] == ("queued", 1) and ("running", 1) in evs
    assert evs[-1] == ("succeeded", 2)
    assert evs.count(("succeeded", 2)) == 1


async def test_a_job_whose_workers_keep_dying_ends_a_dead_letter(
    infra: Infra, redis: Redis, tmp_path: Path
) -> None:
    from arq.constants import retry_key_prefix

    from libs.queue import JobContext, job

    @job(name="doomed", max_tries=2)
    async def doomed(ctx: JobContext) -> None:
        raise AssertionError("never runs: its tries are spent")

    jid = await enqueue_now(redis, service=SERVICE, function="doomed")
    assert jid
    # as if two workers had died running it (each claim counts a try)
    await redis.set(retry_key_prefix + jid, 2)
    await run_burst(infra.redis_url, SERVICE, [doomed])
    evs = await events_for(redis, jid)
    assert [(e.status, e.attempt) for e in evs] == [("queued", 1), ("dead", 3)]
    assert "worker gone" in (evs[-1].error or "")
