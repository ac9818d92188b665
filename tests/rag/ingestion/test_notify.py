"""A file that fails to ingest is told to whoever added it (libs/notify: a delivery job on
the jobs service's queue, once per file and generation)."""

from __future__ import annotations

import pickle
import uuid

from redis.asyncio import Redis

from libs.notify import Event, event_id_for, job_id_for
from libs.queue import JobContext
from services.rag.ingestion.service import _notify_failed


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
