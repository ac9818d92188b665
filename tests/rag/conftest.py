"""The rag app in-process over the session's PostgreSQL and Redis, its files in a temporary
folder, its sessions inside the test's rolled-back transaction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.db import Database
from libs.state import AppState
from libs.testing import Infra, running
from services.rag.app import build_app
from services.rag.settings import RagSettings
from tests.support.fakes import openai_fake
from tests.support.stacks.llm import KEY_ENV, Upstream, fake_openai_upstream
from tests.support.stacks.rag import http_for, rag_settings, serve_llm


@pytest.fixture(scope="session")
async def llm_url(infra: Infra) -> AsyncIterator[str]:
    """The real llm service (its local embedding model) for the whole session."""
    server = await serve_llm()
    yield server.url
    await server.stop()


@pytest.fixture(scope="session")
async def chat_llm(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Upstream]]:
    """The real llm with chat on the fake OpenAI upstream (its reply steered per test) and
    ``embed`` on the local embedding model."""
    with fake_openai_upstream() as upstream, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, openai_fake.API_KEY)
        server = await serve_llm(chat_on=upstream.url, tmp=tmp_path_factory.mktemp("llm"))
        yield server.url, upstream
        await server.stop()


@pytest.fixture
def settings(tmp_path: Path, infra: Infra) -> RagSettings:
    return rag_settings(tmp_path)


def fast_settings(tmp_path: Path, llm_url: str) -> RagSettings:
    """Ingestion settings quick enough for tests."""
    return rag_settings(
        tmp_path,
        llm_url=llm_url,
        embed_retries=2,
        embed_backoff_s=0.05,
        ingest_lease_s=3,
        reconcile_interval_s=0.5,
    )


@contextlib.asynccontextmanager
async def deleted_after(engine: AsyncEngine) -> AsyncIterator[None]:
    """Delete the vector stores and files committed meanwhile (their attachments and chunks
    with them): tests run one at a time, so what was made since is this test's."""
    async with engine.connect() as conn:
        since = await conn.scalar(text("SELECT clock_timestamp()"))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            for table in ("rag.vector_stores", "rag.files"):
                await conn.execute(
                    text(f"DELETE FROM {table} WHERE created_at >= :t"), {"t": since}
                )


@pytest.fixture
async def committed(
    tmp_path: Path, llm_url: str, redis: object, engine: AsyncEngine
) -> AsyncIterator[FastAPI]:
    """The rag app writing for real (its worker, another process's view, must see the rows),
    embedding through the session's llm; what it wrote is deleted afterwards."""
    rag_app = build_app(fast_settings(tmp_path, llm_url))
    async with deleted_after(engine), running(rag_app):
        yield rag_app


@pytest.fixture
async def answering(
    tmp_path: Path, chat_llm: tuple[str, Upstream], redis: object, engine: AsyncEngine
) -> AsyncIterator[tuple[FastAPI, Upstream]]:
    """:func:`committed` over the llm whose chat is the fake upstream."""
    url, upstream = chat_llm
    upstream.reset()
    rag_app = build_app(fast_settings(tmp_path, url))
    async with deleted_after(engine), running(rag_app):
        yield rag_app, upstream


@pytest.fixture
async def app(settings: RagSettings, db: AsyncConnection, redis: object) -> AsyncIterator[FastAPI]:
    """The rag app running, its sessions inside the test's rolled-back transaction; Redis
    emptied around it (the ingestion jobs it queues name files that are rolled back)."""
    rag_app = build_app(settings)
    async with running(rag_app):
        AppState.of_app(rag_app).db = Database.joined(db)
        yield rag_app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_for(app) as client:
        yield client
