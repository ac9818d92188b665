from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from libs.testing import auth_headers, principal
from services.rag.settings import RagSettings
from tests.support.stacks.rag import sdk_for


def stored(settings: RagSettings) -> list[bytes]:
    """Every object's bytes in the local storage folder."""
    return [p.read_bytes() for p in Path(settings.storage_dir).rglob("*") if p.is_file()]


async def test_upload_list_retrieve_download_delete_with_the_sdk(
    app: FastAPI, settings: RagSettings
) -> None:
    who = principal()
    client = sdk_for(app, who)
    body = b"hello, files\n" * 1000
    f = await client.files.create(file=("notes.txt", body), purpose="assistants")
    assert f.id.startswith("file-") and f.object == "file"
    assert (f.bytes, f.filename, f.purpose, f.status) == (
        len(body),
        "notes.txt",
        "assistants",
        "processed",
    )
    assert f.expires_at is None
    # the bytes are in storage under the organization, whole
    assert stored(settings) == [body]

    again = await client.files.retrieve(f.id)
    assert again == f
    content = await client.files.content(f.id)
    assert content.content == body

    batch = await client.files.create(file=("in.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert batch.expires_at == batch.created_at + 30 * 86400  # OpenAI's default for batch
    listing = await client.files.list()
    assert [x.id for x in listing.data] == [batch.id, f.id]  # newest first
    assert [x.id for x in (await client.files.list(purpose="batch")).data] == [batch.id]
    asc = await client.files.list(order="asc", limit=1)
    assert [x.id for x in asc.data] == [f.id] and asc.has_more
    nxt = await client.files.list(order="asc", limit=1, after=f.id)
    assert [x.id for x in nxt.data] == [batch.id]

    deleted = await client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(f.id)
    assert body not in stored(settings)


async def test_expires_after_is_honoured(app: FastAPI) -> None:
    client = sdk_for(app, principal())
    f = await client.files.create(
        file=("a.txt", b"abc"),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600
    with pytest.raises(openai.BadRequestError) as exc:
        await client.files.create(
            file=("a.txt", b"abc"),
            purpose="user_data",
            expires_after={"anchor": "created_at", "seconds": 10},
        )
    assert exc.value.body["param"] == "expires_after.seconds"  # type: ignore[index]


async def test_refused_uploads_leave_nothing(
    app: FastAPI, http: httpx.AsyncClient, settings: RagSettings
) -> None:
    who = principal()
    client = sdk_for(app, who)
    with pytest.raises(openai.BadRequestError) as empty:
        await client.files.create(file=("empty.txt", b""), purpose="assistants")
    assert empty.value.body["param"] == "file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        await client.files.create(file=("a.txt", b"x"), purpose="nonsense")  # type: ignore[arg-type]
    assert bad_purpose.value.body["param"] == "purpose"  # type: ignore[index]
    resp = await http.post("/v1/files", data={"purpose": "assistants"}, headers=auth_headers(who))
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    resp = await http.post("/v1/files", json={"purpose": "assistants"}, headers=auth_headers(who))
    assert resp.status_code == 400
    assert (await client.files.list()).data == []
    assert stored(settings) == []


async def test_oversized_upload_is_a_413_in_openai_shape(
    app: FastAPI, http: httpx.AsyncClient, settings: RagSettings
) -> None:
    settings.max_upload_bytes = 10_000
    who = principal()
    resp = await http.post(
        "/v1/files",
        files={"file": ("big.bin", b"x" * 10_001)},
        data={"purpose": "assistants"},
        headers=auth_headers(who),
    )
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "file_too_large"
    ok = await http.post(
        "/v1/files",
        files={"file": ("ok.bin", b"x" * 10_000)},
        data={"purpose": "assistants"},
        headers=auth_headers(who),
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["bytes"] == 10_000
    assert stored(settings) == [b"x" * 10_000]


async def test_limits_per_organization(app: FastAPI, settings: RagSettings, redis: object) -> None:
    # redis: flushed, so no plan published by another test applies (the settings do)
    settings.org_max_files = 2
    settings.org_max_storage_bytes = 100
    client = sdk_for(app, principal())
    await client.files.create(file=("a.txt", b"a" * 60), purpose="assistants")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.files.create(file=("b.txt", b"b" * 41), purpose="assistants")
    assert exc.value.code == "quota_exceeded"
    await client.files.create(file=("b.txt", b"b" * 40), purpose="assistants")
    with pytest.raises(openai.PermissionDeniedError):
        await client.files.create(file=("c.txt", b"c"), purpose="assistants")


async def test_another_organizations_file_is_unknown(app: FastAPI, http: httpx.AsyncClient) -> None:
    alice, mallory = principal(), principal()
    f = await sdk_for(app, alice).files.create(file=("a.txt", b"secret"), purpose="assistants")
    for method, path in (
        ("GET", f"/v1/files/{f.id}"),
        ("GET", f"/v1/files/{f.id}/content"),
        ("DELETE", f"/v1/files/{f.id}"),
        ("GET", f"/internal/files/{f.id}"),
        ("GET", f"/internal/files/{f.id}/content"),
    ):
        theirs = await http.request(method, path, headers=auth_headers(mallory))
        unknown = await http.request(
            method, path.replace(f.id, "file-" + uuid.uuid4().hex), headers=auth_headers(mallory)
        )
        assert theirs.status_code == unknown.status_code == 404, (method, path)
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"]
    assert (await sdk_for(app, mallory).files.list()).data == []
    for bad in ("nope", "file-xyz", "file-" + "g" * 32):
        assert (await http.get(f"/v1/files/{bad}", headers=auth_headers(alice))).status_code == 404


async def test_scopes(app: FastAPI, http: httpx.AsyncClient) -> None:
    reader = principal(scopes=["rag:read"])
    assert (await http.get("/v1/files")).status_code == 401
    assert (await http.get("/v1/files", headers=auth_headers(reader))).status_code == 200
    resp = await http.post(
        "/v1/files",
        files={"file": ("a.txt", b"a")},
        data={"purpose": "assistants"},
        headers=auth_headers(reader),
    )
    assert resp.status_code == 403


async def test_internal_upload_writes_batch_output(app: FastAPI, http: httpx.AsyncClient) -> None:
    who = principal(scopes=["jobs:write"])  # the batch owner's principal, forwarded by jobs
    resp = await http.post(
        "/internal/files",
        files={"file": ("out.jsonl", b'{"id": 1}\n')},
        data={"purpose": "batch_output"},
        headers=auth_headers(who),
    )
    assert resp.status_code == 200, resp.text
    fid = resp.json()["id"]
    got = await http.get(f"/internal/files/{fid}/content", headers=auth_headers(who))
    assert got.content == b'{"id": 1}\n'
    # the public route does not take aistack's own purposes
    resp = await http.post(
        "/v1/files",
        files={"file": ("out.jsonl", b"x")},
        data={"purpose": "batch_output"},
        headers=auth_headers(principal()),
    )
    assert resp.status_code == 400
