"""Ingestion end to end: files of every format attached with the official SDK, the real worker
(parse, chunk, embed through the real llm's local model, index), statuses and errors."""

from __future__ import annotations

import json

import openai
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.testing import principal
from services.rag.state import RagState
from tests.support.stacks.rag import docx_bytes, pdf_bytes, run_worker, sdk_for

MARKDOWN_ZH = """# 员工手册

## 年假

员工每年享有二十五天带薪年假。年假必须在次年三月前休完！

## 差旅

出差需经理批准。报销需要发票；每日补贴为三百元。

| 城市 | 每日补贴 |
|------|----------|
| 北京 | 300 |
| 上海 | 320 |
"""


async def upload(client: openai.AsyncOpenAI, name: str, body: bytes) -> str:
    return (await client.files.create(file=(name, body), purpose="assistants")).id


async def test_every_format_is_ingested(committed: FastAPI, engine: AsyncEngine) -> None:
    client = sdk_for(committed, principal())
    settings = RagState.of_app(committed).settings
    files = {
        "zh.md": MARKDOWN_ZH.encode(),
        "notes.txt": b"The quick brown fox jumps over the lazy dog. It was a sunny day.",
        "page.html": b"<html><body><h1>Refunds</h1><p>Refunds take 14 days.</p>"
        b"<table><tr><th>Plan</th><th>Days</th></tr><tr><td>Pro</td><td>30</td></tr></table>"
        b"<script>ignored()</script></body></html>",
        "policy.pdf": pdf_bytes(
            ["Expense policy. Meals are reimbursed up to 40 euros per day."],
            [["Category", "Limit"], ["Meals", "40"], ["Hotel", "150"]],
        ),
        "guide.docx": docx_bytes(
            [("Onboarding", ["Laptops are issued on the first day."])],
            [["Item", "Owner"], ["Laptop", "IT"]],
        ),
        "rows.csv": b"name,team\nAda,Research\nGrace,Compilers\n",
        "data.json": json.dumps([{"q": "capital of France", "a": "Paris"}]).encode(),
    }
    ids = {name: await upload(client, name, body) for name, body in files.items()}
    vs = await client.vector_stores.create(name="all formats", file_ids=list(ids.values()))
    assert vs.status == "in_progress"
    await run_worker(settings)
    store = await client.vector_stores.retrieve(vs.id)
    listing = await client.vector_stores.files.list(vector_store_id=vs.id, limit=20)
    states = {f.id: (f.status, f.last_error) for f in listing.data}
    assert store.file_counts.completed == len(files), states
    assert store.status == "completed" and store.usage_bytes > 0

    async def content(name: str) -> str:
        page = await client.vector_stores.files.content(file_id=ids[name], vector_store_id=vs.id)
        return "\n".join(p.text or "" for p in page.data)

    zh = await content("zh.md")
    assert "二十五天带薪年假" in zh and "| 北京 | 300 |" in zh
    assert "Refunds take 14 days" in await content("page.html")
    assert "ignored" not in await content("page.html")
    pdf = await content("policy.pdf")
    assert "Meals are reimbursed" in pdf and "Meals | 40" in pdf and "Hotel | 150" in pdf
    docx = await content("guide.docx")
    assert "Laptops are issued" in docx and "Laptop | IT" in docx
    assert "Ada | Research" in await content("rows.csv")
    assert "a: Paris" in await content("data.json")

    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT count(*), count(embedding), min(dims), max(dims) FROM rag.chunks "
                    "WHERE vector_store_id = :vs"
                ),
                {"vs": vs.id.removeprefix("vs_")},
            )
        ).one()
    assert rows[0] == rows[1] and rows[2] == rows[3] == 384  # every chunk embedded, 384 dimensions
    # the heading path the chunk starts under
    async with engine.connect() as conn:
        headings = (
            (
                await conn.execute(
                    text("SELECT DISTINCT headings FROM rag.chunks WHERE file_id = :f"),
                    {"f": ids["zh.md"].removeprefix("file-")},
                )
            )
            .scalars()
            .all()
        )
    assert headings == ["员工手册"]  # one chunk (800 tokens), under the title


async def test_bad_files_fail_with_a_reason_and_leave_the_rest_alone(committed: FastAPI) -> None:
    client = sdk_for(committed, principal())
    settings = RagState.of_app(committed).settings
    good = await upload(client, "good.txt", b"Everything here is fine and readable.")
    bad = {
        "corrupt.pdf": (b"%PDF-1.4\n" + b"\x00garbage" * 50, "invalid_file", "PDF"),
        "locked.pdf": (
            pdf_bytes(["Secret salary table."], password="pw"),
            "invalid_file",
            "encrypted",
        ),
        "broken.docx": (b"PK\x03\x04word/not really a zip", "invalid_file", "DOCX"),
        "blank.txt": (b"   \n\n  \t\n", "invalid_file", "no text"),
        "image.png": (
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
            "unsupported_file",
            "not supported",
        ),
        "scan.pdf": (pdf_bytes([]), "invalid_file", "no text"),
    }
    bad_ids = {name: await upload(client, name, body) for name, (body, _, _) in bad.items()}
    vs = await client.vector_stores.create(name="mixed", file_ids=[good, *bad_ids.values()])
    await run_worker(settings)
    for name, (_, code, words) in bad.items():
        f = await client.vector_stores.files.retrieve(file_id=bad_ids[name], vector_store_id=vs.id)
        assert f.status == "failed", (name, f)
        assert f.last_error is not None and f.last_error.code == code, (name, f.last_error)
        assert words.lower() in f.last_error.message.lower(), (name, f.last_error.message)
    ok = await client.vector_stores.files.retrieve(file_id=good, vector_store_id=vs.id)
    assert ok.status == "completed" and ok.last_error is None
    store = await client.vector_stores.retrieve(vs.id)
    assert store.file_counts.failed == len(bad) and store.file_counts.completed == 1
    assert store.status == "completed"


async def test_embedding_outage_retries_then_fails_clearly(committed: FastAPI) -> None:
    from tests.support.servers import dead_url

    client = sdk_for(committed, principal())
    settings = RagState.of_app(committed).settings
    settings.llm_url = dead_url()
    f = await upload(client, "a.txt", b"Some text to embed.")
    vs = await client.vector_stores.create(file_ids=[f])
    await run_worker(settings)
    sf = await client.vector_stores.files.retrieve(file_id=f, vector_store_id=vs.id)
    assert sf.status == "failed" and sf.last_error is not None
    assert sf.last_error.code == "server_error"
    assert "unavailable after 3 tries" in sf.last_error.message


async def test_reattaching_with_new_chunking_swaps_generations(
    committed: FastAPI, engine: AsyncEngine
) -> None:
    client = sdk_for(committed, principal())
    settings = RagState.of_app(committed).settings
    body = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(300)).encode()
    f = await upload(client, "long.txt", body)
    vs = await client.vector_stores.create(file_ids=[f])
    await run_worker(settings)

    async def chunks() -> list[tuple[int, int]]:
        async with engine.connect() as conn:
            return [
                (g, n)
                for g, n in (
                    await conn.execute(
                        text(
                            "SELECT generation, count(*) FROM rag.chunks WHERE file_id = :f "
                            "GROUP BY generation ORDER BY generation"
                        ),
                        {"f": f.removeprefix("file-")},
                    )
                ).all()
            ]

    first = await chunks()
    assert len(first) == 1 and first[0][0] == 1
    sf = await client.vector_stores.files.create(
        vector_store_id=vs.id,
        file_id=f,
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0},
        },
    )
    assert sf.status == "in_progress"
    # until the new generation is done, searches keep seeing the old chunks
    assert await chunks() == first
    await run_worker(settings)
    second = await chunks()
    assert len(second) == 1 and second[0][0] == 2 and second[0][1] > first[0][1]
    done = await client.vector_stores.files.retrieve(file_id=f, vector_store_id=vs.id)
    assert done.status == "completed"
    assert done.chunking_strategy.static.max_chunk_size_tokens == 100  # type: ignore[union-attr]
