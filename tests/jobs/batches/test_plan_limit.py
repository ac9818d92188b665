"""The plan's batch_jobs: how many batches of an organization may be in progress at once
(validating, in_progress, finalizing, cancelling); over it, createBatch answers 429."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from libs.db import make_engine
from libs.entitlements import Entitlements, Limits, publish
from libs.testing import Infra
from tests.support.stacks.batches import batch_stack, chat_line, jsonl


async def fair_waiting(redis: Redis, batch_id: str) -> bool:
    """Whether the batch's job waits in the jobs queue's fair queues."""
    from libs.queue.names import fair_prefix, queue_name

    return (
        await redis.zscore(fair_prefix(queue_name("jobs")) + "waiting", f"batch:{batch_id}")
        is not None
    )


# no worker runs here: batches stay `validating`, no line reaches an llm
NO_LLM = "http://127.0.0.1:9"


async def test_a_plans_batch_jobs_limits_the_batches_in_progress_at_once(
    infra: Infra, tmp_path: Path, redis: Redis
) -> None:
    async with batch_stack(
        infra, tmp_path, NO_LLM, worker=False, entitlements_ttl_seconds=0
    ) as stack:
        await publish(redis, stack.org, Entitlements(plan="tiny", limits=Limits(batch_jobs=2)))
        client = stack.sdk()
        f = await client.files.create(
            file=("in.jsonl", jsonl(chat_line("a", "hi"))), purpose="batch"
        )

        async def create() -> str:
            b = await client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            return b.id

        first, _ = await create(), await create()
        with pytest.raises(openai.RateLimitError) as exc:
            await create()
        assert exc.value.status_code == 429
        assert exc.value.code == "rate_limit_exceeded"
        assert exc.value.type == "rate_limit_error"
        assert "batch_jobs" in exc.value.message and "of 2 batches" in exc.value.message
        assert len((await client.batches.list()).data) == 2  # nothing written
        # cancelling still counts (its requests may still be in flight)
        await client.batches.cancel(first)
        with pytest.raises(openai.RateLimitError):
            await create()

        # a finished batch frees its place
        engine = make_engine(infra.database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE jobs.batches SET status = 'cancelled' WHERE id = :id"),
                    {"id": first},
                )
        finally:
            await engine.dispose()
        await create()
        with pytest.raises(openai.RateLimitError):
            await create()

        # a larger plan: more at once
        await publish(redis, stack.org, Entitlements(plan="more", limits=Limits(batch_jobs=3)))
        await create()

        # an organization without a plan (billing not deployed): no limit, as before
        other = stack.sdk(stack.other_org)
        g = await other.files.create(
            file=("in.jsonl", jsonl(chat_line("a", "hi"))), purpose="batch"
        )
        for _ in range(4):
            await other.batches.create(
                input_file_id=g.id, endpoint="/v1/chat/completions", completion_window="24h"
            )


async def test_a_batch_created_while_redis_is_down_is_refused_and_leaves_nothing(
    infra: Infra, tmp_path: Path, redis: Redis
) -> None:
    # its job is queued inside the create's transaction: no Redis, no batch (a 503 the SDK
    # retries), never a batch `validating` that no job will run
    from tests.support.faults.outages import redis_down

    async with batch_stack(infra, tmp_path, NO_LLM, worker=False) as stack:
        client = stack.sdk()
        f = await client.files.create(
            file=("in.jsonl", jsonl(chat_line("a", "hi"))), purpose="batch"
        )
        async with redis_down(stack.jobs_app):
            with pytest.raises(openai.InternalServerError) as exc:
                await client.with_options(max_retries=0).batches.create(
                    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
        assert exc.value.status_code == 503
        assert (await client.batches.list()).data == []
        # Redis back: created, and its job queued
        b = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert b.status == "validating"
        assert await redis.exists(f"arq:job:batch:{b.id}") or await fair_waiting(redis, b.id)
