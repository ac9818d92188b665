"""The llm worker's purge of expired stored responses (``services.llm.tasks``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db import make_session_factory
from services.llm import tasks
from services.llm.responses import repository


async def _ids(engine: AsyncEngine, ids: list[str]) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id FROM llm.responses WHERE id = ANY(:ids)"), {"ids": ids}
        )
        return {r[0] for r in rows}


async def test_worker_purges_expired_responses(engine: AsyncEngine, redis: Redis) -> None:
    sessions = make_session_factory(engine)
    org = uuid.uuid4()
    expired, live = f"resp_{uuid.uuid4().hex}", f"resp_{uuid.uuid4().hex}"
    for rid in (expired, live):
        await repository.save(
            sessions,
            response={"id": rid, "model": "m", "object": "response"},
            org_id=org,
            user_id=None,
            key_id=None,
            input_items=[],
            history=[],
            ttl_days=1,
        )
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE llm.responses SET expires_at = now() - interval '1 minute' WHERE id = :i"),
            {"i": expired},
        )
    assert await repository.load(sessions, org, expired) is None  # invisible already
    assert await _ids(engine, [expired, live]) == {expired, live}

    ctx: dict[str, Any] = {"db": sessions, "redis": redis}
    await tasks.on_startup(ctx)
    try:
        for _ in range(100):  # the first purge runs at start-up
            if await _ids(engine, [expired, live]) == {live}:
                break
            await asyncio.sleep(0.05)
        assert await _ids(engine, [expired, live]) == {live}
    finally:
        await tasks.on_shutdown(ctx)
        async with engine.begin() as conn:  # committed: not left to other tests' purges
            await conn.execute(
                text("DELETE FROM llm.responses WHERE id = ANY(:ids)"), {"ids": [expired, live]}
            )
    assert ctx["responses_purge_task"].done()
