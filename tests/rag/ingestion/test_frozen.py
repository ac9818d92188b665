"""A frozen account's ingestion (billing froze it between the attach and the worker): the
embeddings rag makes on its behalf are refused by the llm, the file fails saying why, and
searching (a query to embed) answers 402 account_frozen."""

from __future__ import annotations

import asyncio

import openai
from fastapi import FastAPI
from redis.asyncio import Redis

from libs.entitlements import Entitlements, publish
from libs.testing import principal
from services.rag.state import RagState
from tests.support.stacks.rag import run_worker, sdk_for


async def _search_refused(client: openai.AsyncOpenAI, store_id: str) -> openai.APIStatusError:
    """The search's error once the llm sees the freeze (it keeps a plan it read for
    LLM_ENTITLEMENTS_TTL_SECONDS)."""
    for _ in range(200):
        try:
            await client.vector_stores.search(vector_store_id=store_id, query="refunds")
        except openai.APIStatusError as exc:
            return exc
        await asyncio.sleep(0.1)
    raise AssertionError("the search was never refused")


async def test_ingestion_of_a_frozen_account_fails_clearly(
    committed: FastAPI, redis: Redis
) -> None:
    who = principal()
    assert who.org_id is not None
    client = sdk_for(committed, who)
    settings = RagState.of_app(committed).settings
    first = await client.files.create(
        file=("a.txt", b"Refunds take 14 days."), purpose="assistants"
    )
    vs = await client.vector_stores.create(name="kb", file_ids=[first.id])
    await run_worker(settings)
    assert (await client.vector_stores.search(vector_store_id=vs.id, query="refunds")).data
    late = await client.files.create(file=("b.txt", b"Returns take 30 days."), purpose="assistants")
    await client.vector_stores.files.create(vector_store_id=vs.id, file_id=late.id)

    await publish(redis, who.org_id, Entitlements(plan="pro", status="frozen"))
    refused = await _search_refused(client, vs.id)
    assert refused.status_code == 402 and refused.code == "account_frozen"
    await run_worker(settings)
    done = await client.vector_stores.files.retrieve(file_id=late.id, vector_store_id=vs.id)
    assert done.status == "failed" and done.last_error is not None
    assert "account is frozen" in done.last_error.message
    # what was ingested before stays
    kept = await client.vector_stores.files.retrieve(file_id=first.id, vector_store_id=vs.id)
    assert kept.status == "completed"
