"""A file that fails to ingest is told to whoever added it (libs/notify: a delivery job on
the jobs service's queue, once per file and generation)."""

from __future__ import annotations

import pickle
import uuid

from fastapi import FastAPI
from redis.asyncio import Redis

from libs.notify import Event, event_id_for, job_id_for
from libs.queue import JobContext
from libs.testing import principal
from services.rag.ingestion.service import _notify_failed
from services.rag.state import RagState
from tests.support.stacks.rag import run_worker, sdk_for


async def test_a_failed_file_notifies_who_added_it_once(redis: Redis) -> None:
    org, user, store, file = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    jc = JobContext(
        job_id="ingest-1",
        service="rag",
        function="ingest_file",
        attempt=1,
        redis=redis,
        state={},
        org_id=str(org),
        user_id=str(user),
    )
    for _ in range(2):  # the same failure told twice is one event
        await _notify_failed(jc, store, file, 3, "invalid_file", "The file has no text.")
    event_id = event_id_for("vector_store.file.failed", f"{file}:3")
    raw = await redis.get(f"arq:job:{job_id_for(event_id)}")
    assert raw is not None
    ev = Event.model_validate(pickle.loads(raw)["k"]["event"])
    assert (ev.kind, ev.org_id, ev.user_id, ev.source) == (
        "vector_store.file.failed",
        org,
        user,
        "rag",
    )
    assert ev.data["file_id"] == str(file) and ev.data["error_code"] == "invalid_file"
    assert len(await redis.keys("arq:job:notify-*")) == 1


async def test_the_real_worker_tells_of_a_file_that_failed(
    committed: FastAPI, redis: Redis
) -> None:
    p = principal()
    client = sdk_for(committed, p)
    bad = (await client.files.create(file=("blank.txt", b"  \n\t "), purpose="assistants")).id
    vs = await client.vector_stores.create(name="notify", file_ids=[bad])
    await run_worker(RagState.of_app(committed).settings)
    f = await client.vector_stores.files.retrieve(file_id=bad, vector_store_id=vs.id)
    assert f.status == "failed"
    told = []
    for key in await redis.keys("arq:job:notify-*"):
        raw = await redis.get(key)
        if raw is not None:
            ev = Event.model_validate(pickle.loads(raw)["k"]["event"])
            if ev.kind == "vector_store.file.failed":
                told.append(ev)
    assert [(e.kind, e.org_id, e.user_id) for e in told] == [
        ("vector_store.file.failed", p.org_id, p.user_id)
    ]
    assert told[0].data["error_code"] == "invalid_file"
