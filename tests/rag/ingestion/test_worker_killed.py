"""Killing the rag worker in the middle of a 200-file batch: a new worker finishes every file,
each exactly once (chunk counts equal a clean run's)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.testing import principal
from services.rag.ingestion.chunk import chunk
from services.rag.ingestion.parse import parse
from services.rag.settings import RagSettings
from services.rag.state import RagState
from tests.support.stacks.rag import sdk_for

ROOT = Path(__file__).resolve().parents[3]
FILES = 200


def worker_env(settings: RagSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "RAG_LLM_URL": settings.llm_url,
            "RAG_STORAGE_DIR": settings.storage_dir,
            "RAG_INGEST_LEASE_S": "2",
            "RAG_RECONCILE_INTERVAL_S": "0.5",
            "LOG_JSON": "true",
        }
    )
    return env


async def start_worker(settings: RagSettings, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libs.worker",
        "rag",
        cwd=str(ROOT),
        env=worker_env(settings),
        stdout=log.open("ab"),
        stderr=asyncio.subprocess.STDOUT,
    )


def body(i: int) -> bytes:
    # two chunks each at 100 tokens: a file is a few sentences on its own topic
    sentences = [
        f"Document {i} sentence {j} describes item {i * 7 + j} in some detail." for j in range(14)
    ]
    return " ".join(sentences).encode()


async def test_killed_worker_mid_batch_finishes_every_file_once(
    committed: FastAPI, engine: AsyncEngine, tmp_path: Path
) -> None:
    settings = RagState.of_app(committed).settings
    client = sdk_for(committed, principal())
    started = time.monotonic()
    ids = []
    for start in range(0, FILES, 20):
        uploads = await asyncio.gather(
            *(
                client.files.create(file=(f"doc{i}.txt", body(i)), purpose="assistants")
                for i in range(start, min(start + 20, FILES))
            )
        )
        ids += [f.id for f in uploads]
    print(f"uploaded {FILES} files in {time.monotonic() - started:.1f} s")
    strategy = {
        "type": "static",
        "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20},
    }
    expected = sum(len(chunk(parse(f"doc{i}.txt", body(i)), 100, 20)) for i in range(FILES))
    vs = await client.vector_stores.create(name="big")
    batch = await client.vector_stores.file_batches.create(
        vector_store_id=vs.id,
        file_ids=ids,
        chunking_strategy=strategy,  # type: ignore[arg-type]
    )
    log = tmp_path / "worker.log"
    first = await start_worker(settings, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            b = await client.vector_stores.file_batches.retrieve(
                batch_id=batch.id, vector_store_id=vs.id
            )
            if b.file_counts.completed >= 20:
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        killed_at = b.file_counts.completed
        assert killed_at < FILES, "the batch finished before the kill: make the files bigger"
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    second = await start_worker(settings, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            b = await client.vector_stores.file_batches.retrieve(
                batch_id=batch.id, vector_store_id=vs.id
            )
            if b.file_counts.in_progress == 0:
                break
            assert time.monotonic() < deadline, (b.file_counts, log.read_text()[-3000:])
            await asyncio.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(second.wait(), 30)
        except TimeoutError:
            second.kill()
            await second.wait()
    assert b.status == "completed"
    assert b.file_counts.completed == FILES, b.file_counts
    async with engine.connect() as conn:
        total, distinct, visible = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT (file_id, seq)), "
                    "count(*) FILTER (WHERE visible) FROM rag.chunks WHERE vector_store_id = :vs"
                ),
                {"vs": vs.id.removeprefix("vs_")},
            )
        ).one()
    assert total == distinct == visible == expected


async def test_a_job_lost_with_redis_is_given_again(committed: FastAPI, redis: object) -> None:
    """The queue forgot the file's job (Redis flushed, restored from an old snapshot): the
    worker's reconciler queues it again instead of leaving it in progress for ever."""
    from redis.asyncio import Redis

    from tests.support.stacks.rag import run_worker

    assert isinstance(redis, Redis)
    settings = RagState.of_app(committed).settings
    client = sdk_for(committed, principal())
    f = await client.files.create(file=("a.txt", b"Lost and found."), purpose="assistants")
    vs = await client.vector_stores.create(file_ids=[f.id])
    await redis.flushdb()
    await run_worker(settings)  # the reconciler runs at start: one job queued, then run
    await run_worker(settings)
    sf = await client.vector_stores.files.retrieve(file_id=f.id, vector_store_id=vs.id)
    assert sf.status == "completed"
