"""Issue 14's walk-through through the gateway with the official SDK: a PDF, a DOCX and a
Chinese Markdown file into a vector store (upload_and_poll, file_batches.upload_and_poll),
searched in each mode, asked with /answer. (The Responses API's file_search part belongs to
the llm's tests.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.testing import Infra
from services.rag.app import build_app as build_rag
from tests.support.servers import serve
from tests.support.stacks.llm import Upstream
from tests.support.stacks.rag import docx_bytes, pdf_bytes, rag_settings, run_worker
from tests.support.stacks.stand_ins import FAKE_AUTH

ZH = "# 报销制度\n\n## 餐补\n\n出差期间每日餐补为一百二十元。报销需在三十天内提交发票。\n"


@dataclass
class Stack:
    url: str
    token: str

    def sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.token, max_retries=0, timeout=60
        )


@pytest.fixture
async def stack(
    infra: Infra, tmp_path: Path, chat_llm: tuple[str, Upstream], redis: object
) -> AsyncIterator[tuple[Stack, Upstream]]:
    llm_url, upstream = chat_llm
    upstream.reset()
    settings = rag_settings(tmp_path, llm_url=llm_url, embed_backoff_s=0.05)
    rag = await serve(build_rag(settings))
    keys = await serve(FAKE_AUTH.app())
    gw_settings = GatewaySettings.model_validate(
        {
            "use_redis": True,
            "jwks_url": f"{keys.url}/.well-known/jwks.json",
            "rag_url": rag.url,
            "llm_url": llm_url,
        }
    )
    gw = await serve(build_gateway(gw_settings))
    worker = await run_worker(settings, burst=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield Stack(gw.url, FAKE_AUTH.token(org_id=uuid.uuid4())), upstream
    finally:
        await worker.close()
        task.cancel()
        for r in (gw, keys, rag):
            await r.stop()


async def test_knowledge_base_walkthrough(stack: tuple[Stack, Upstream]) -> None:
    s, upstream = stack
    client = s.sdk()
    vs = await client.vector_stores.create(name="handbook")
    pdf = await client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id,
        file=(
            "expenses.pdf",
            pdf_bytes(
                ["Hotel nights are reimbursed up to 150 euros."],
                [["Category", "Limit"], ["Hotel", "150"], ["Meals", "40"]],
            ),
        ),
        poll_interval_ms=200,
    )
    assert pdf.status == "completed", pdf.last_error
    batch = await client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=vs.id,
        files=[
            (
                "onboarding.docx",
                docx_bytes([("Onboarding", ["New hires get a laptop on day one."])]),
            ),
            ("报销.md", ZH.encode()),
        ],
        poll_interval_ms=200,
    )
    assert batch.status == "completed" and batch.file_counts.completed == 2
    store = await client.vector_stores.retrieve(vs.id)
    assert store.status == "completed" and store.file_counts.completed == 3
    names = {f.id: f.filename for f in (await client.files.list()).data}

    for mode in ("hybrid", "vector", "fulltext"):
        page = await client.vector_stores.search(
            vs.id, query="hotel reimbursement limit", extra_body={"mode": mode}
        )
        assert names[page.data[0].file_id] == "expenses.pdf", mode
        zh = await client.vector_stores.search(
            vs.id, query="每日餐补多少钱", extra_body={"mode": mode}
        )
        assert names[zh.data[0].file_id] == "报销.md", mode

    upstream.behavior.reply.text = "每日餐补为一百二十元[1]。"
    async with httpx.AsyncClient(base_url=s.url, timeout=60) as http:
        resp = await http.post(
            f"/v1/vector_stores/{vs.id}/answer",
            json={"query": "出差每日餐补是多少？"},
            headers={"authorization": f"Bearer {s.token}"},
        )
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["cited"] == [1] and answer["citations"][0]["filename"] == "报销.md"
        # a streamed answer arrives as events through the gateway
        async with http.stream(
            "POST",
            f"/v1/vector_stores/{vs.id}/answer",
            json={"query": "What is the hotel limit?", "stream": True},
            headers={"authorization": f"Bearer {s.token}"},
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = "".join([chunk async for chunk in stream.aiter_text()])
        assert text.startswith("event: retrieval") and "event: done" in text

    # errors come in OpenAI's shape, so the SDK raises its own exceptions
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve("vs_" + uuid.uuid4().hex)
    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("empty.txt", b""), purpose="assistants")
