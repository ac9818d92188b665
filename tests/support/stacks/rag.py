"""The rag service in tests: its settings over a temporary folder, and the official SDK
calling its app in-process as a principal (what the gateway forwards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
from fastapi import FastAPI

from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.settings import DEV_INTERNAL_SECRET
from services.rag.settings import RagSettings


def rag_settings(tmp_path: Path, **overrides: Any) -> RagSettings:
    return RagSettings(storage_dir=str(tmp_path / "files"), **overrides)


def sdk_for(app: FastAPI, who: Principal) -> openai.AsyncOpenAI:
    """The official SDK calling ``app`` in-process as ``who``."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://rag.test")
    return openai.AsyncOpenAI(
        base_url="http://rag.test/v1",
        api_key="unused",
        http_client=http,
        # a token for as long as a slow test may run (the gateway's live a minute)
        default_headers={INTERNAL_HEADER: sign_internal_token(who, DEV_INTERNAL_SECRET, 3600)},
        max_retries=0,
    )


def http_for(app: FastAPI) -> httpx.AsyncClient:
    """A raw client calling ``app`` in-process (headers per request)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rag.test")


# --- documents the tests ingest (made here: nothing downloaded, nothing binary in the repo)


def pdf_bytes(
    paragraphs: list[str],
    table: list[list[str]] | None = None,
    *,
    password: str | None = None,
) -> bytes:
    """A text PDF (Helvetica: Latin text only) with an optional bordered table after the text;
    with ``password`` it opens only with it (encrypted)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for p in paragraphs:
        pdf.multi_cell(0, 6, p)
        pdf.ln(4)
    if table:
        with pdf.table() as t:
            for row in table:
                r = t.row()
                for cell in row:
                    r.cell(cell)
    if password is not None:
        pdf.set_encryption(owner_password="owner-" + password, user_password=password)
    return bytes(pdf.output())


def docx_bytes(
    sections: list[tuple[str, list[str]]], table: list[list[str]] | None = None
) -> bytes:
    """A DOCX with a heading per section, its paragraphs, and an optional table at the end."""
    import io

    import docx

    document = docx.Document()
    for heading, paragraphs in sections:
        document.add_heading(heading, level=1)
        for p in paragraphs:
            document.add_paragraph(p)
    if table:
        t = document.add_table(rows=len(table), cols=len(table[0]))
        for i, row in enumerate(table):
            for j, cell in enumerate(row):
                t.cell(i, j).text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


# --- the llm (embeddings) and the rag worker in-process


async def serve_llm(chat_on: str | None = None, tmp: Path | None = None) -> Any:
    """The real llm app on a free port: ``embed`` is the local all-MiniLM-L6-v2 on the CPU,
    chat the built-in local model, or with ``chat_on`` a fake OpenAI upstream there (its key in
    ``tests.support.stacks.llm.KEY_ENV``); returns the running server (``.url``, ``.stop()``)."""
    from services.llm.app import build_app as build_llm
    from services.llm.settings import LlmSettings
    from tests.support.servers import serve
    from tests.support.stacks.llm import KEY_ENV, settings_for

    if chat_on is None:
        return await serve(build_llm(LlmSettings()))
    assert tmp is not None
    routing = {
        "providers": {
            "fake": {"kind": "openai", "base_url": f"{chat_on}/v1", "api_key_env": KEY_ENV},
            "local": {"kind": "local"},
        },
        "models": {
            "default": {
                "context_window": 128000,
                "targets": [{"provider": "fake", "model": "gpt-4o-mini"}],
            },
            "embed": {
                "type": "embedding",
                # the local provider's embedding model (services/llm/routing/config.py)
                "targets": [{"provider": "local", "model": "all-minilm-l6-v2"}],
            },
        },
    }
    return await serve(build_llm(settings_for(tmp, routing)))


async def run_worker(settings: RagSettings, *, burst: bool = True, **options: Any) -> Any:
    """The rag worker with its real start-up (storage, embedder, reconciler, purge) over
    ``settings``; in burst mode it returns once the queue is empty."""
    from libs.worker import Worker, worker_settings
    from services.rag import tasks

    worker = Worker(
        **worker_settings(
            "rag",
            tasks.functions,
            redis_url=settings.redis_url,
            database_url=settings.database_url,
            settings=settings,
            on_startup=tasks.on_startup,
            on_shutdown=tasks.on_shutdown,
            handle_signals=False,
            burst=burst,
            **{**tasks.worker_options, **options},
            poll_delay=0.05,
        )
    )
    if burst:
        try:
            await worker.async_run()
        finally:
            await worker.close()
    return worker
