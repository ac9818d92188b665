"""The Responses API's ``file_search`` tool through the gateway, as ``make run`` serves it: the
real llm with its built-in local models (SmolLM2 for chat, multilingual-e5-small as
``embed-multilingual`` for the store's embeddings), the real rag and its worker, the official
``openai`` SDK. A PDF, a DOCX and a Chinese Markdown file in a vector store; questions in
English and Chinese, in JSON and streamed, cite the right files (retrieval decides them: the
tiny local model's prose is weak).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.identity import INTERNAL_HEADER, sign_internal_token
from libs.settings import DEV_INTERNAL_SECRET
from libs.testing import Infra, principal
from services.llm.app import build_app as build_llm
from services.llm.settings import LlmSettings
from services.rag.app import build_app as build_rag
from tests.support.servers import dead_url, serve
from tests.support.stacks.rag import docx_bytes, pdf_bytes, rag_settings, run_worker
from tests.support.stacks.stand_ins import FAKE_AUTH

pytestmark = pytest.mark.slow

ZH = "# 报销制度\n\n## 餐补\n\n出差期间每日餐补为一百二十元。报销需在三十天内提交发票。\n"


@dataclass
class Stack:
    url: str
    org: uuid.UUID

    def sdk(self, org: uuid.UUID | None = None) -> openai.AsyncOpenAI:
        token = FAKE_AUTH.token(org_id=org or self.org)
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0)


@pytest.fixture
async def stack(infra: Infra, tmp_path: Path, redis: object) -> AsyncIterator[Stack]:
    rag_url = dead_url()  # the llm must know rag's address before rag (which needs the llm's)
    llm = await serve(build_llm(LlmSettings(rag_url=rag_url)))
    settings = rag_settings(tmp_path, llm_url=llm.url, embed_backoff_s=0.05)
    rag = await serve(build_rag(settings), port=int(rag_url.rsplit(":", 1)[1]))
    keys = await serve(FAKE_AUTH.app())
    gw = await serve(
        build_gateway(
            GatewaySettings.model_validate(
                {
                    "use_redis": True,
                    "jwks_url": f"{keys.url}/.well-known/jwks.json",
                    "rag_url": rag.url,
                    "llm_url": llm.url,
                }
            )
        )
    )
    worker = await run_worker(settings, burst=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield Stack(gw.url, uuid.uuid4())
    finally:
        await worker.close()
        task.cancel()
        for r in (gw, keys, rag, llm):
            await r.stop()


async def _store(client: openai.AsyncOpenAI) -> tuple[str, dict[str, str]]:
    """A vector store with the three files, all completed; file names by id."""
    vs = await client.vector_stores.create(
        name="handbook", extra_body={"embedding_model": "embed-multilingual"}
    )
    pdf = await client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id,
        file=(
            "expenses.pdf",
            pdf_bytes(
                ["Hotel nights are reimbursed up to 150 euros per night."],
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
                docx_bytes([("Onboarding", ["New hires get a laptop on their first day."])]),
            ),
            ("报销.md", ZH.encode()),
        ],
        poll_interval_ms=200,
    )
    assert batch.status == "completed" and batch.file_counts.completed == 2
    return vs.id, {f.id: f.filename for f in (await client.files.list()).data}


def _cited(response: Any) -> list[str]:
    message = next(item for item in response.output if item.type == "message")
    return [a.filename for part in message.content for a in part.annotations]


async def test_file_search_cites_the_right_files(stack: Stack) -> None:
    client = stack.sdk()
    store, names = await _store(client)
    tool: Any = {"type": "file_search", "vector_store_ids": [store], "max_num_results": 1}

    en: Any = await client.responses.create(
        model="default",
        input="How much is a hotel night reimbursed?",
        tools=[tool],
        max_output_tokens=40,
    )
    call, message = en.output[0], en.output[1]
    assert call.type == "file_search_call" and call.id.startswith("fs_")
    assert call.status == "completed"
    assert call.queries == ["How much is a hotel night reimbursed?"]
    assert call.results is None  # only with include
    assert message.type == "message"
    assert set(_cited(en)) == {"expenses.pdf"}
    text = message.content[0]
    for a in text.annotations:
        assert a.type == "file_citation" and names[a.file_id] == a.filename
        assert 0 <= a.index <= len(text.text)
    # a later turn chains to it: the search was context for its own turn only
    follow: Any = await client.responses.create(
        model="default", input="Thanks!", previous_response_id=en.id, max_output_tokens=5
    )
    assert follow.output[0].type == "message"

    zh: Any = await client.responses.create(
        model="default",
        input="出差每日餐补是多少？",  # noqa: RUF001
        tools=[tool],
        include=["file_search_call.results"],
        max_output_tokens=40,
    )
    (result,) = zh.output[0].results
    assert result.filename == "报销.md" and names[result.file_id] == "报销.md"
    assert result.text and "一百二十元" in result.text and 0 < result.score <= 1
    assert set(_cited(zh)) == {"报销.md"}

    # streamed: OpenAI's events, the search first, the citations before the text is done
    events: list[Any] = []
    stream = await client.responses.create(
        model="default",
        input="What does a new hire get on the first day?",
        tools=[tool],
        max_output_tokens=30,
        stream=True,
    )
    async for event in stream:
        events.append(event)
    kinds = [e.type for e in events]
    search = [k for k in kinds if k.startswith("response.file_search_call.")]
    assert search == [
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
    ]
    assert kinds.index(search[-1]) < kinds.index("response.output_text.delta")
    added = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert [getattr(e.annotation, "filename", None) for e in added] == ["onboarding.docx"]
    assert kinds.index("response.output_text.annotation.added") < kinds.index(
        "response.output_text.done"
    )
    final: Any = events[-1]
    assert final.type == "response.completed"
    assert final.response.output[0].type == "file_search_call"
    assert _cited(final.response) == ["onboarding.docx"]
    # stored with its search, as returned
    again = await client.responses.retrieve(final.response.id)
    assert _cited(again) == ["onboarding.docx"]


async def test_tool_choice_max_tool_calls_and_follow_ups(stack: Stack) -> None:
    client = stack.sdk()
    store, _ = await _store(client)
    tool: Any = {"type": "file_search", "vector_store_ids": [store], "max_num_results": 1}
    question = "How much is a hotel night reimbursed?"
    # no search when the model may call no tool, or no built-in tool
    for extra in ({"tool_choice": "none"}, {"max_tool_calls": 0}):
        r: Any = await client.responses.create(
            model="default", input=question, tools=[tool], max_output_tokens=5, **extra
        )
        assert [item.type for item in r.output] == ["message"], extra
        assert _cited(r) == []
        assert r.tools[0].type == "file_search"  # the tool is still echoed
    assert r.max_tool_calls == 0
    # naming the tool searches, as auto does
    first: Any = await client.responses.create(
        model="default",
        input=question,
        tools=[tool],
        tool_choice={"type": "file_search"},
        max_tool_calls=1,
        max_output_tokens=5,
    )
    assert first.output[0].type == "file_search_call" and first.max_tool_calls == 1
    assert first.output[0].queries == [question]
    # a short follow-up is searched with the question before it: the search knows the topic
    follow: Any = await client.responses.create(
        model="default",
        input="And for meals?",
        previous_response_id=first.id,
        tools=[tool],
        include=["file_search_call.results"],
        max_output_tokens=5,
    )
    call = follow.output[0]
    assert call.queries == ["And for meals?", question]
    assert [res.filename for res in call.results] == ["expenses.pdf"]


async def test_file_search_errors(stack: Stack) -> None:
    client = stack.sdk()
    store, _ = await _store(client)
    unknown = "vs_" + uuid.uuid4().hex
    for ids in ([unknown], [store]):
        with pytest.raises(openai.NotFoundError) as info:
            # the second: a store of another organization is unknown to this one
            who = client if ids == [unknown] else stack.sdk(uuid.uuid4())
            await who.responses.create(
                model="default",
                input="hello",
                tools=[{"type": "file_search", "vector_store_ids": ids}],
            )
        assert info.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(
            model="default",
            input="hello",
            tools=[{"type": "file_search", "vector_store_ids": [store], "max_num_results": 99}],
        )
    assert bad.value.body["param"] == "tools[0].max_num_results"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(
            model="default",
            input="hello",
            tools=[{"type": "file_search", "vector_store_ids": [store]}],
            max_tool_calls=-1,
        )


async def test_rag_down_is_a_clear_503(infra: Infra) -> None:
    llm = await serve(build_llm(LlmSettings(rag_url=dead_url())))
    who = principal()
    client = openai.AsyncOpenAI(
        base_url=f"{llm.url}/v1",
        api_key="unused",
        default_headers={INTERNAL_HEADER: sign_internal_token(who, DEV_INTERNAL_SECRET, 600)},
        max_retries=0,
    )
    try:
        with pytest.raises(openai.InternalServerError) as info:
            await client.responses.create(
                model="default",
                input="hello",
                tools=[{"type": "file_search", "vector_store_ids": ["vs_" + "0" * 32]}],
            )
        assert info.value.status_code == 503
        assert info.value.code == "file_search_unavailable"
        assert "file_search is unavailable" in info.value.message
        assert info.value.response.headers["retry-after"]
    finally:
        await llm.stop()
