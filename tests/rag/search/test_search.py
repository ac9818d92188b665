"""Search through the official SDK over really ingested files: each mode, filters, Chinese,
several stores, isolation."""

from __future__ import annotations

import uuid

import openai
import pytest
from fastapi import FastAPI

from libs.testing import auth_headers, principal
from services.rag.state import RagState
from tests.support.stacks.rag import http_for, run_worker, sdk_for

DOCS = {
    "vacation.md": "# Leave\n\nEmployees receive 25 days of paid vacation per year. Unused "
    "vacation days expire at the end of March.",
    "travel.md": "# Travel\n\nBusiness trips need a manager's approval. Hotels are booked "
    "through the travel desk.",
    "security.md": "# Security\n\nLaptops must use full-disk encryption. Report a lost badge to "
    "the security office within one hour.",
    "年假.md": "# 年假制度\n\n员工每年享有二十五天带薪年假。未休年假在次年三月底作废。",
    "报销.md": "# 报销\n\n出差报销需要提供发票，每日餐补为一百元。",
}


@pytest.fixture
async def indexed(committed: FastAPI) -> tuple[openai.AsyncOpenAI, str, dict[str, str]]:
    client = sdk_for(committed, principal())
    ids = {}
    for name, body in DOCS.items():
        ids[name] = (await client.files.create(file=(name, body.encode()), purpose="assistants")).id
    vs = await client.vector_stores.create(name="policies")
    year = {"vacation.md": 2024, "travel.md": 2023, "security.md": 2025}
    await client.vector_stores.file_batches.create(
        vector_store_id=vs.id,
        files=[
            {
                "file_id": fid,
                "attributes": {"year": year.get(n, 2022), "lang": "zh" if n[0] > "z" else "en"},
            }
            for n, fid in ids.items()
        ],
    )
    await run_worker(RagState.of_app(committed).settings)
    assert (await client.vector_stores.retrieve(vs.id)).file_counts.completed == len(DOCS)
    return client, vs.id, ids


async def test_each_mode_finds_the_right_file(
    indexed: tuple[openai.AsyncOpenAI, str, dict[str, str]],
) -> None:
    client, vs, ids = indexed
    for mode in ("hybrid", "vector", "fulltext"):
        page = await client.vector_stores.search(
            vs, query="How many vacation days do employees get?", extra_body={"mode": mode}
        )
        assert page.data, mode
        top = page.data[0]
        assert top.file_id == ids["vacation.md"], (mode, [(d.filename, d.score) for d in page.data])
        assert top.filename == "vacation.md" and 0 < top.score <= 1
        assert "25 days" in top.content[0].text
        assert top.attributes == {"year": 2024, "lang": "en"}
        assert getattr(page, "search_query", None) == ["How many vacation days do employees get?"]
        scores = [d.score for d in page.data]
        assert scores == sorted(scores, reverse=True)


async def test_chinese_queries(indexed: tuple[openai.AsyncOpenAI, str, dict[str, str]]) -> None:
    client, vs, ids = indexed
    page = await client.vector_stores.search(
        vs, query="年假有多少天？", extra_body={"mode": "fulltext"}
    )
    assert page.data and page.data[0].file_id == ids["年假.md"]
    page = await client.vector_stores.search(vs, query="出差报销 发票", max_num_results=2)
    assert page.data[0].file_id == ids["报销.md"]
    assert len(page.data) <= 2


async def test_filters_and_threshold(
    indexed: tuple[openai.AsyncOpenAI, str, dict[str, str]],
) -> None:
    client, vs, ids = indexed
    page = await client.vector_stores.search(
        vs, query="vacation days", filters={"type": "eq", "key": "lang", "value": "zh"}
    )
    assert {d.file_id for d in page.data} <= {ids["年假.md"], ids["报销.md"]}
    page = await client.vector_stores.search(
        vs,
        query="policy",
        filters={
            "type": "and",
            "filters": [
                {"type": "gte", "key": "year", "value": 2024},
                {"type": "eq", "key": "lang", "value": "en"},
            ],
        },
        extra_body={"mode": "vector"},
    )
    assert {d.file_id for d in page.data} == {ids["vacation.md"], ids["security.md"]}
    page = await client.vector_stores.search(
        vs,
        query="policy",
        filters={
            "type": "or",
            "filters": [
                {"type": "in", "key": "year", "value": [2023]},
                {"type": "lt", "key": "year", "value": 2023},
            ],
        },
        extra_body={"mode": "vector"},
    )
    assert ids["travel.md"] in {d.file_id for d in page.data}
    assert ids["vacation.md"] not in {d.file_id for d in page.data}
    everything = await client.vector_stores.search(
        vs, query="vacation", extra_body={"mode": "vector"}
    )
    none = await client.vector_stores.search(
        vs,
        query="vacation",
        ranking_options={"score_threshold": 1.0},
        extra_body={"mode": "vector"},
    )
    assert everything.data and none.data == []


async def test_several_stores_and_isolation(
    committed: FastAPI, indexed: tuple[openai.AsyncOpenAI, str, dict[str, str]]
) -> None:
    client, vs, ids = indexed
    other = await client.vector_stores.create(name="empty")
    async with http_for(committed) as http:
        # the SDK's own default headers carry the principal; reuse them for raw calls
        headers = {
            k: str(v) for k, v in client.default_headers.items() if k.startswith("x-aistack")
        }
        resp = await http.post(
            "/v1/vector_stores/search",
            json={"vector_store_ids": [vs, other.id], "query": "laptop encryption"},
            headers=headers,
        )
        assert resp.status_code == 200, resp.text
        data = resp.json()["data"]
        assert data[0]["file_id"] == ids["security.md"] and data[0]["vector_store_id"] == vs
        internal = await http.post(
            "/internal/search",
            json={"vector_store_ids": [vs], "query": "laptop encryption", "max_num_results": 1},
            headers=headers,
        )
        assert internal.json()["data"][0]["file_id"] == ids["security.md"]
        mallory = auth_headers(principal())
        for path, body in (
            (f"/v1/vector_stores/{vs}/search", {"query": "x"}),
            ("/v1/vector_stores/search", {"query": "x", "vector_store_ids": [vs]}),
            ("/internal/search", {"query": "x", "vector_store_ids": [vs]}),
        ):
            theirs = await http.post(path, json=body, headers=mallory)
            unknown = await http.post(
                path.replace(vs, "vs_" + uuid.uuid4().hex),
                json={
                    k: ([f"vs_{uuid.uuid4().hex}"] if k == "vector_store_ids" else v)
                    for k, v in body.items()
                },
                headers=mallory,
            )
            assert theirs.status_code == unknown.status_code == 404, (path, theirs.text)
        for bad in (
            {"query": ""},
            {"query": "x", "max_num_results": 51},
            {"query": "x", "mode": "magic"},
            {"query": "x", "filters": {"type": "in", "key": "a", "value": 1}},
            {"query": "x", "filters": {"type": "xor", "filters": []}},
            {"query": "x", "ranking_options": {"score_threshold": 2}},
        ):
            resp = await http.post(f"/v1/vector_stores/{vs}/search", json=bad, headers=headers)
            assert resp.status_code in (400, 422), (bad, resp.text)
            assert resp.json()["error"]["type"] == "invalid_request_error"


async def test_search_before_anything_is_indexed(app: FastAPI) -> None:
    client = sdk_for(app, principal())
    vs = await client.vector_stores.create(name="new")
    page = await client.vector_stores.search(vs.id, query="anything")
    assert page.data == []
    async with http_for(app) as http:
        resp = await http.post(
            f"/v1/vector_stores/{vs.id}/search",
            json={"query": "the a of"},
            headers=auth_headers(principal()),
        )
        assert resp.status_code == 404


async def test_rewrite_query(indexed: tuple[openai.AsyncOpenAI, str, dict[str, str]]) -> None:
    """rewrite_query searches the question's content words and says so in search_query."""
    client, vs, ids = indexed
    page = await client.vector_stores.search(
        vs, query="How many vacation days do employees get?", rewrite_query=True
    )
    assert getattr(page, "search_query", None) == ["vacation days employees get"]
    assert page.data[0].file_id == ids["vacation.md"]
    page = await client.vector_stores.search(vs, query="年假有多少天？", rewrite_query=True)
    assert getattr(page, "search_query", None) == ["年假天"]
    assert page.data[0].file_id == ids["年假.md"]
    # without it the query is searched (and echoed) as given
    page = await client.vector_stores.search(vs, query=["Who approves business trips?"])
    assert getattr(page, "search_query", None) == ["Who approves business trips?"]
    assert page.data[0].file_id == ids["travel.md"]
