"""A running batch against a slow upstream: cancelled, it stops within seconds and reports
what completed; its worker SIGKILLed, another resumes it without sending any custom_id twice.
Usage of batch lines is metered as batch usage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import openai
from sqlalchemy import text

from libs.db import make_engine
from libs.testing import Infra
from services.jobs.batches.runner import CLAIM_AHEAD
from tests.support.stacks.batches import batch_stack, chat_line, jsonl, wait_status
from tests.support.stacks.llm import Upstream

ROOT = Path(__file__).resolve().parents[3]


def sent_ids(upstream: Upstream) -> list[str]:
    """The custom ids the upstream got (each line's message is its custom id)."""
    return [
        r["json"]["messages"][-1]["content"]
        for r in upstream.behavior.requests
        if r["path"].endswith("/chat/completions")
    ]


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    text = (await client.files.content(file_id)).text
    return [json.loads(line) for line in text.splitlines()]


async def wait_completed(client: openai.AsyncOpenAI, batch_id: str, at_least: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while loop.time() < deadline:
        b = await client.batches.retrieve(batch_id)
        if b.request_counts and b.request_counts.completed >= at_least:
            return
        if b.status in ("completed", "failed", "expired", "cancelled"):
            errors = (await lines_of(client, b.error_file_id))[:2]
            raise AssertionError(f"batch {batch_id} ended first: {b}, errors: {errors}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} never reached {at_least} completed requests: {b}")


async def start(client: openai.AsyncOpenAI, prefix: str, n: int) -> str:
    ids = [f"{prefix}-{i}" for i in range(n)]
    data = jsonl(*(chat_line(c, c) for c in ids))
    f = await client.files.create(file=("in.jsonl", data), purpose="batch")
    b = await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return b.id


async def test_a_cancelled_batch_stops_within_seconds_and_keeps_what_completed(
    infra: Infra, tmp_path: Path, slow_llm: tuple[str, Upstream]
) -> None:
    url, upstream = slow_llm
    upstream.reset()
    upstream.behavior.delay = 0.1
    try:
        async with batch_stack(infra, tmp_path, url, batch_concurrency=4) as stack:
            client = stack.sdk()
            batch_id = await start(client, "cancel", 200)
            await wait_completed(client, batch_id, 8)
            # the requests in flight now would take a minute: cancel must not wait for them
            upstream.behavior.delay = 60
            cancelling = await client.batches.cancel(batch_id)
            assert cancelling.status == "cancelling" and cancelling.cancelling_at
            done = await wait_status(client, batch_id, {"cancelled"}, within=15)
            assert done.cancelled_at and done.request_counts is not None
            counts = done.request_counts
            assert counts.total == 200 and 8 <= counts.completed < 200
            out = await lines_of(client, done.output_file_id)
            assert len(out) == counts.completed
            assert all(r["response"]["status_code"] == 200 for r in out)
            assert counts.failed == len(await lines_of(client, done.error_file_id))
            sent = len(sent_ids(upstream))
            await asyncio.sleep(0.5)
            assert len(sent_ids(upstream)) == sent  # nothing more is sent
            # cancelling again answers the batch as it is
            assert (await client.batches.cancel(batch_id)).status == "cancelled"
    finally:
        # the requests left hanging upstream (a minute each) answer now: as timeouts later
        # they would open the provider's circuit breaker for the next test on this llm
        upstream.reset()


async def test_a_worker_killed_mid_batch_is_resumed_without_sending_a_line_twice(
    infra: Infra, tmp_path: Path, fake_llm: tuple[str, Upstream]
) -> None:
    url, upstream = fake_llm
    upstream.reset()
    upstream.behavior.delay = 0.05
    async with batch_stack(infra, tmp_path, url, worker=False, batch_concurrency=2) as stack:
        client = stack.sdk()
        batch_id = await start(client, "crash", 60)
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, killed below
            [
                sys.executable,
                "-m",
                "tests.support.batch_worker",
                infra.redis_url,
                infra.database_url,
                stack.jobs.rag_url,
                url,
                "1",
            ],
            cwd=ROOT,
            env={**os.environ, "LOG_JSON": "true"},
        )
        try:
            await wait_completed(client, batch_id, 10)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        before = Counter(sent_ids(upstream))
        stack.start_worker(lease_s=1.0)
        done = await wait_status(client, batch_id, {"completed"}, within=60)
        out = await lines_of(client, done.output_file_id)
        err = await lines_of(client, done.error_file_id)

    sent = Counter(sent_ids(upstream))
    assert max(sent.values()) == 1, [c for c, n in sent.items() if n > 1]
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(err))
    # every line is reported once: answered, or interrupted (sent by the dead worker, its
    # answer lost with it), never sent again
    reported = [r["custom_id"] for r in out + err]
    assert sorted(reported) == sorted(f"crash-{i}" for i in range(60))
    assert all(r["error"]["code"] == "interrupted" for r in err)
    # lines are claimed a few at a time just ahead of being sent: the dead worker's claims
    # without an answer are at most its 2 requests in flight and the lines claimed next
    assert len(err) <= 2 + 2 * CLAIM_AHEAD * 2
    assert {r["custom_id"] for r in out} <= set(sent)
    assert sum(before.values()) >= 10


async def test_a_batch_past_its_window_expires_with_its_unrun_lines_in_the_error_file(
    infra: Infra, tmp_path: Path, fake_llm: tuple[str, Upstream]
) -> None:
    url, upstream = fake_llm
    upstream.reset()
    upstream.behavior.delay = 0.1
    engine = make_engine(infra.database_url)
    async with batch_stack(infra, tmp_path, url, batch_concurrency=2) as stack:
        client = stack.sdk()
        batch_id = await start(client, "late", 100)
        await wait_completed(client, batch_id, 4)
        async with engine.begin() as conn:  # its 24 hours are up
            await conn.execute(
                text("UPDATE jobs.batches SET expires_at = now() WHERE id = :id"), {"id": batch_id}
            )
        done = await wait_status(client, batch_id, {"expired"}, within=30)
        assert done.expired_at and done.request_counts is not None
        out = await lines_of(client, done.output_file_id)
        err = await lines_of(client, done.error_file_id)
    await engine.dispose()
    assert done.request_counts.completed == len(out) >= 4
    assert done.request_counts.failed == len(err) == 100 - len(out)
    assert {r["error"]["code"] for r in err} == {"batch_expired"}
    assert sorted(r["custom_id"] for r in out + err) == sorted(f"late-{i}" for i in range(100))
    upstream.reset()
