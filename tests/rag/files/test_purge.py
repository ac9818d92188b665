"""Expired files disappear at once and are purged (rows and bytes) by the worker's purge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from libs.testing import principal
from services.rag.files.purge import purge
from services.rag.settings import RagSettings
from services.rag.state import RagState
from tests.support.stacks.rag import sdk_for


def stored(settings: RagSettings) -> list[Path]:
    return [p for p in Path(settings.storage_dir).rglob("*") if p.is_file()]


async def test_expired_files_are_gone_then_purged(app: FastAPI, settings: RagSettings) -> None:
    state = RagState.of_app(app)
    async with state.db() as session:
        # the purge takes every expired file and owed delete: those other tests committed are
        # set aside, inside this test's transaction (rolled back after it)
        await session.execute(text("DELETE FROM rag.storage_deletions"))
        await session.execute(text("DELETE FROM rag.files WHERE expires_at <= now()"))
        await session.commit()
    client = sdk_for(app, principal())
    keep = await client.files.create(file=("keep.txt", b"keep"), purpose="assistants")
    f = await client.files.create(
        file=("old.txt", b"old"),
        purpose="assistants",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    vs = await client.vector_stores.create(file_ids=[f.id, keep.id])
    async with state.db() as session:
        await session.execute(
            text("UPDATE rag.files SET expires_at = :t WHERE id = :id"),
            {"t": datetime.now(UTC) - timedelta(seconds=1), "id": f.id.removeprefix("file-")},
        )
        await session.commit()
    # expired: unknown at once, before any purge
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(f.id)
    assert [x.id for x in (await client.files.list()).data] == [keep.id]
    assert len(stored(settings)) == 2
    assert await purge(state.db, state.storage) == (1, 1)
    assert len(stored(settings)) == 1
    # and it left the store with it
    assert (await client.vector_stores.retrieve(vs.id)).file_counts.total == 1
    assert await purge(state.db, state.storage) == (0, 0)
