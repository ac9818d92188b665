"""Vector stores, their files and batches through the official SDK (ingestion not run here:
tests/rag/ingestion runs it)."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from libs.queue import fair, queue_name
from libs.testing import auth_headers, principal
from tests.support.stacks.rag import sdk_for


async def test_store_crud_with_the_sdk(app: FastAPI, redis: Redis) -> None:
    client = sdk_for(app, principal())
    f1 = await client.files.create(file=("a.txt", b"alpha"), purpose="assistants")
    vs = await client.vector_stores.create(
        name="handbook",
        file_ids=[f1.id],
        metadata={"team": "hr"},
        expires_after={"anchor": "last_active_at", "days": 7},
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50},
        },
    )
    assert vs.id.startswith("vs_") and vs.object == "vector_store"
    assert vs.name == "handbook" and vs.metadata == {"team": "hr"}
    assert vs.file_counts.in_progress == 1 and vs.file_counts.total == 1
    assert vs.status == "in_progress"
    assert vs.expires_after is not None and vs.expires_after.days == 7
    assert vs.expires_at == vs.last_active_at + 7 * 86400  # type: ignore[operator]
    assert vs.model_extra is not None and vs.model_extra["embedding_model"] == "embed"
    # its ingestion was queued once the transaction committed
    assert (await fair.depth(redis, queue_name("rag"))).waiting == 1

    sf = await client.vector_stores.files.retrieve(file_id=f1.id, vector_store_id=vs.id)
    assert sf.id == f1.id and sf.vector_store_id == vs.id and sf.status == "in_progress"
    assert sf.chunking_strategy is not None
    assert sf.chunking_strategy.static.max_chunk_size_tokens == 200  # type: ignore[union-attr]

    f2 = await client.files.create(file=("b.txt", b"beta"), purpose="assistants")
    sf2 = await client.vector_stores.files.create(
        vector_store_id=vs.id, file_id=f2.id, attributes={"year": 2024, "lang": "en"}
    )
    assert sf2.attributes == {"year": 2024, "lang": "en"}
    assert sf2.chunking_strategy.static.max_chunk_size_tokens == 800  # type: ignore[union-attr]
    updated = await client.vector_stores.files.update(
        file_id=f2.id, vector_store_id=vs.id, attributes={"year": 2025}
    )
    assert updated.attributes == {"year": 2025}
    listing = await client.vector_stores.files.list(vector_store_id=vs.id)
    assert [x.id for x in listing.data] == [f2.id, f1.id]
    assert (
        await client.vector_stores.files.list(vector_store_id=vs.id, filter="completed")
    ).data == []

    renamed = await client.vector_stores.update(vs.id, name="policies", expires_after=None)
    assert renamed.name == "policies" and renamed.expires_at is None
    assert [s.id for s in (await client.vector_stores.list()).data] == [vs.id]

    gone = await client.vector_stores.files.delete(file_id=f1.id, vector_store_id=vs.id)
    assert gone.deleted and gone.object == "vector_store.file.deleted"
    assert (await client.files.retrieve(f1.id)).id == f1.id  # the file itself stays
    # deleting the file removes it from every store, as OpenAI does
    await client.files.delete(f2.id)
    assert (await client.vector_stores.retrieve(vs.id)).file_counts.total == 0

    deleted = await client.vector_stores.delete(vs.id)
    assert deleted.deleted and deleted.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve(vs.id)


async def test_batches_count_and_cancel(app: FastAPI, redis: Redis) -> None:
    client = sdk_for(app, principal())
    files = [
        await client.files.create(file=(f"{i}.txt", b"x"), purpose="assistants") for i in range(5)
    ]
    vs = await client.vector_stores.create(name="b")
    batch = await client.vector_stores.file_batches.create(
        vector_store_id=vs.id,
        files=[{"file_id": f.id, "attributes": {"n": i}} for i, f in enumerate(files[:3])],
    )
    assert batch.id.startswith("vsfb_") and batch.object == "vector_store.files_batch"
    assert batch.file_counts.in_progress == 3 and batch.status == "in_progress"
    batch2 = await client.vector_stores.file_batches.create(
        vector_store_id=vs.id, file_ids=[f.id for f in files[3:]], attributes={"k": "v"}
    )
    listed = await client.vector_stores.file_batches.list_files(
        batch_id=batch2.id, vector_store_id=vs.id
    )
    assert {x.id for x in listed.data} == {f.id for f in files[3:]}
    assert all(x.attributes == {"k": "v"} for x in listed.data)
    cancelled = await client.vector_stores.file_batches.cancel(
        batch_id=batch.id, vector_store_id=vs.id
    )
    assert cancelled.status == "cancelled" and cancelled.file_counts.cancelled == 3
    again = await client.vector_stores.file_batches.retrieve(
        batch_id=batch.id, vector_store_id=vs.id
    )
    assert again.status == "cancelled"
    store = await client.vector_stores.retrieve(vs.id)
    assert store.file_counts.cancelled == 3 and store.file_counts.in_progress == 2
    assert (await fair.depth(redis, queue_name("rag"))).waiting == 5


async def test_validation_errors_are_openai_shaped(app: FastAPI, http: httpx.AsyncClient) -> None:
    who = principal()
    h = auth_headers(who)
    cases = [
        {
            "chunking_strategy": {
                "type": "static",
                "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0},
            }
        },
        {
            "chunking_strategy": {
                "type": "static",
                "static": {"max_chunk_size_tokens": 400, "chunk_overlap_tokens": 201},
            }
        },
        {"chunking_strategy": {"type": "other"}},
        {"metadata": {"k" * 65: "v"}},
        {"expires_after": {"anchor": "created_at", "days": 1}},
        {"file_ids": ["file-" + uuid.uuid4().hex]},
        {"name": 5},
    ]
    for body in cases:
        resp = await http.post("/v1/vector_stores", json=body, headers=h)
        assert 400 <= resp.status_code < 500, (body, resp.text)
        err = resp.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"], body
    resp = await http.post(
        "/v1/vector_stores", content=b"{nope", headers={**h, "content-type": "application/json"}
    )
    assert resp.status_code == 400
    resp = await http.post("/v1/vector_stores", json={"name": "x"}, headers=h)
    vs = resp.json()["id"]
    resp = await http.post(f"/v1/vector_stores/{vs}/file_batches", json={}, headers=h)
    assert resp.status_code == 400, resp.text
    resp = await http.post(
        f"/v1/vector_stores/{vs}/files",
        json={"file_id": "file-x", "attributes": {"a": [1]}},
        headers=h,
    )
    assert resp.status_code in (400, 422)
    resp = await http.get("/v1/vector_stores?after=bogus", headers=h)
    assert resp.status_code == 400


async def test_another_organizations_ids_answer_404_everywhere(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    alice, mallory = principal(), principal()
    a = sdk_for(app, alice)
    f = await a.files.create(file=("a.txt", b"x"), purpose="assistants")
    vs = await a.vector_stores.create(name="mine", file_ids=[f.id])
    batch = await a.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[f.id])
    mine_m = await sdk_for(app, mallory).vector_stores.create(name="theirs")
    unknown_vs = "vs_" + uuid.uuid4().hex
    unknown_f = "file-" + uuid.uuid4().hex
    unknown_b = "vsfb_" + uuid.uuid4().hex
    routes: list[tuple[str, str, object]] = [
        ("GET", "/v1/vector_stores/{vs}", None),
        ("POST", "/v1/vector_stores/{vs}", {"name": "x"}),
        ("DELETE", "/v1/vector_stores/{vs}", None),
        ("POST", "/v1/vector_stores/{vs}/files", {"file_id": "{f}"}),
        ("GET", "/v1/vector_stores/{vs}/files", None),
        ("GET", "/v1/vector_stores/{vs}/files/{f}", None),
        ("POST", "/v1/vector_stores/{vs}/files/{f}", {"attributes": {}}),
        ("DELETE", "/v1/vector_stores/{vs}/files/{f}", None),
        ("GET", "/v1/vector_stores/{vs}/files/{f}/content", None),
        ("POST", "/v1/vector_stores/{vs}/file_batches", {"file_ids": ["{f}"]}),
        ("GET", "/v1/vector_stores/{vs}/file_batches/{b}", None),
        ("POST", "/v1/vector_stores/{vs}/file_batches/{b}/cancel", None),
        ("GET", "/v1/vector_stores/{vs}/file_batches/{b}/files", None),
        # mallory's own store, alice's file or batch
        ("POST", f"/v1/vector_stores/{mine_m.id}/files", {"file_id": "{f}"}),
        ("POST", f"/v1/vector_stores/{mine_m.id}/file_batches", {"file_ids": ["{f}"]}),
        ("GET", f"/v1/vector_stores/{mine_m.id}/file_batches/{{b}}", None),
    ]

    def fill(template: object, vs_id: str, f_id: str, b_id: str) -> object:
        if isinstance(template, str):
            return template.replace("{vs}", vs_id).replace("{f}", f_id).replace("{b}", b_id)
        if isinstance(template, dict):
            return {k: fill(v, vs_id, f_id, b_id) for k, v in template.items()}
        if isinstance(template, list):
            return [fill(v, vs_id, f_id, b_id) for v in template]
        return template

    for method, path, body in routes:
        theirs = await http.request(
            method,
            str(fill(path, vs.id, f.id, batch.id)),
            json=fill(body, vs.id, f.id, batch.id),
            headers=auth_headers(mallory),
        )
        unknown = await http.request(
            method,
            str(fill(path, unknown_vs, unknown_f, unknown_b)),
            json=fill(body, unknown_vs, unknown_f, unknown_b),
            headers=auth_headers(mallory),
        )
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert unknown.status_code == 404, (method, path, unknown.text)
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"], (method, path)
    # and alice's things are untouched
    assert (await a.vector_stores.retrieve(vs.id)).name == "mine"
    assert (
        await a.vector_stores.files.retrieve(file_id=f.id, vector_store_id=vs.id)
    ).status == "in_progress"


async def test_store_limit(app: FastAPI, settings: object, redis: object) -> None:
    # redis: flushed, so no plan published by another test applies (the settings do)
    settings.org_max_vector_stores = 2  # type: ignore[attr-defined]
    client = sdk_for(app, principal())
    await client.vector_stores.create(name="1")
    await client.vector_stores.create(name="2")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.vector_stores.create(name="3")
    assert exc.value.code == "quota_exceeded"
