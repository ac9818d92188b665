"""Cited answers: retrieval first, the model's tokens with [n] markers, done with usage; no
model call when nothing relevant is found."""

from __future__ import annotations

import orjson
from fastapi import FastAPI

from libs.testing import auth_headers, principal
from services.rag.state import RagState
from tests.support.stacks.llm import Upstream
from tests.support.stacks.rag import http_for, run_worker, sdk_for


def sse_events(body: str) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in body.strip().split("\n\n"):
        lines = block.split("\n")
        name = lines[0].removeprefix("event: ")
        data = orjson.loads(lines[1].removeprefix("data: "))
        out.append((name, data))
    return out


async def make_store(app: FastAPI, who: object) -> tuple[str, dict[str, str]]:
    client = sdk_for(app, who)  # type: ignore[arg-type]
    docs = {
        "leave.md": "# Leave\n\nEmployees receive 25 days of paid vacation per year.",
        "年假.md": "# 年假\n\n员工每年享有二十五天带薪年假。",
    }
    ids = {
        n: (await client.files.create(file=(n, b.encode()), purpose="assistants")).id
        for n, b in docs.items()
    }
    vs = await client.vector_stores.create(name="kb", file_ids=list(ids.values()))
    await run_worker(RagState.of_app(app).settings)
    return vs.id, ids


async def test_streamed_answer_cites_the_sources(answering: tuple[FastAPI, Upstream]) -> None:
    app, upstream = answering
    who = principal()
    vs, ids = await make_store(app, who)
    upstream.behavior.reply.text = "Employees get 25 days of paid vacation [1]."
    async with http_for(app) as http:
        resp = await http.post(
            f"/v1/vector_stores/{vs}/answer",
            json={"query": "How many vacation days do employees get?", "stream": True},
            headers=auth_headers(who),
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp.text)
    names = [n for n, _ in events]
    assert names[0] == "retrieval" and names[-1] == "done" and "delta" in names
    citations = events[0][1]["citations"]
    assert isinstance(citations, list) and citations[0]["file_id"] == ids["leave.md"]
    assert citations[0]["index"] == 1 and "25 days" in citations[0]["text"]
    text = "".join(str(d["text"]) for n, d in events if n == "delta")
    assert text == "Employees get 25 days of paid vacation [1]."
    done = events[-1][1]
    assert done["cited"] == [1] and done["found"] is True
    assert done["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    # the model saw numbered sources and the question
    sent = upstream.behavior.last["json"]["messages"]
    assert "[1] (leave.md)" in sent[1]["content"] and "How many vacation days" in sent[1]["content"]


async def test_json_answer_and_nothing_found(answering: tuple[FastAPI, Upstream]) -> None:
    app, upstream = answering
    who = principal()
    vs, ids = await make_store(app, who)
    upstream.behavior.reply.text = "员工每年有二十五天带薪年假[1]。"
    async with http_for(app) as http:
        resp = await http.post(
            f"/v1/vector_stores/{vs}/answer",
            json={"query": "年假有多少天？"},
            headers=auth_headers(who),
            timeout=60,
        )
        body = resp.json()
        assert resp.status_code == 200, body
        assert body["found"] and body["cited"] == [1]
        assert body["citations"][0]["file_id"] == ids["年假.md"]
        calls = len(upstream.behavior.requests)
        # nothing in the store is about this: no model call, and it says so
        resp = await http.post(
            f"/v1/vector_stores/{vs}/answer",
            json={"query": "Quarterly revenue of the Antarctic subsidiary?"},
            headers=auth_headers(who),
        )
        body = resp.json()
        assert body["found"] is False and body["citations"] == [] and body["model"] is None
        assert "could not find" in body["answer"]
        assert len(upstream.behavior.requests) == calls
        # the chat model failing is a clean error, not a 500
        upstream.behavior.status = 500
        resp = await http.post(
            f"/v1/vector_stores/{vs}/answer",
            json={"query": "年假有多少天？"},
            headers=auth_headers(who),
            timeout=60,
        )
        assert resp.status_code in (502, 503), resp.text
        assert resp.json()["error"]["type"] == "api_error"


async def test_a_model_the_llm_does_not_serve_is_a_client_error(
    answering: tuple[FastAPI, Upstream],
) -> None:
    app, _ = answering
    who = principal()
    vs, _ = await make_store(app, who)
    client = sdk_for(app, who)
    bogus = await client.vector_stores.create(name="bogus", extra_body={"embedding_model": "nope"})
    async with http_for(app) as http:
        resp = await http.post(
            f"/v1/vector_stores/{vs}/answer",
            json={"query": "How many vacation days?", "model": "no-such-model"},
            headers=auth_headers(who),
            timeout=60,
        )
        assert resp.status_code == 400, resp.text
        # a store naming an embedding model the llm does not serve: its files fail, its
        # searches are refused with a 400 (not a 5xx)
        f = await client.files.create(file=("a.txt", b"Words."), purpose="assistants")
        await client.vector_stores.files.create(vector_store_id=bogus.id, file_id=f.id)
        await run_worker(RagState.of_app(app).settings)
        sf = await client.vector_stores.files.retrieve(file_id=f.id, vector_store_id=bogus.id)
        assert sf.status == "failed" and sf.last_error is not None
        assert "nope" in sf.last_error.message
