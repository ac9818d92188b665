"""rag's storage and vector-store limits come from the organization's plan (the entitlements
billing publishes to Redis), else from rag's settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.db import Database
from libs.entitlements import Entitlements, Limits, publish
from libs.state import AppState
from libs.testing import Infra, auth_headers, principal, running
from services.rag.app import build_app
from services.rag.settings import RagSettings
from tests.support.stacks.rag import http_for, rag_settings, sdk_for


@pytest.fixture
def settings(tmp_path: Path, infra: Infra) -> RagSettings:
    # a plan change applies at the next request (no cache to wait out)
    return rag_settings(tmp_path, entitlements_ttl_seconds=0)


@pytest.fixture
async def app(settings: RagSettings, db: AsyncConnection, redis: Redis) -> AsyncIterator[FastAPI]:
    rag_app = build_app(settings)
    async with running(rag_app):
        AppState.of_app(rag_app).db = Database.joined(db)
        yield rag_app


def plan(name: str, **limits: int) -> Entitlements:
    return Entitlements(plan=name, limits=Limits(**limits))


async def test_a_plans_storage_bytes_refuses_the_upload_that_passes_it_until_a_larger_plan(
    app: FastAPI, settings: RagSettings, redis: Redis
) -> None:
    settings.org_max_storage_bytes = 10_000  # the plan's limit applies, not this
    who = principal()
    await publish(redis, who.org_id, plan("tiny", storage_bytes=100))
    client = sdk_for(app, who)
    await client.files.create(file=("a.txt", b"a" * 60), purpose="assistants")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.files.create(file=("b.txt", b"b" * 41), purpose="assistants")
    assert exc.value.code == "quota_exceeded"
    assert "storage_bytes" in str(exc.value) and "100 bytes" in str(exc.value)
    assert len((await client.files.list()).data) == 1  # nothing recorded
    # exactly up to the limit passes
    await client.files.create(file=("c.txt", b"c" * 40), purpose="assistants")

    await publish(redis, who.org_id, plan("bigger", storage_bytes=1_000))
    done = await client.files.create(file=("b.txt", b"b" * 41), purpose="assistants")
    assert done.bytes == 41
    # a plan without a storage limit: none
    await publish(redis, who.org_id, plan("unlimited"))
    await client.files.create(file=("d.txt", b"d" * 5_000), purpose="assistants")


async def test_the_internal_file_route_of_batches_counts_against_the_plan(
    app: FastAPI, redis: Redis
) -> None:
    who = principal(scopes=["jobs:write"])  # the batch owner's principal, forwarded by jobs
    await publish(redis, who.org_id, plan("tiny", storage_bytes=10))
    async with http_for(app) as http:
        resp = await http.post(
            "/internal/files",
            files={"file": ("out.jsonl", b'{"id": 1}\n{"id": 2}\n')},
            data={"purpose": "batch_output"},
            headers=auth_headers(who),
        )
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["code"] == "quota_exceeded"
        await publish(redis, who.org_id, plan("more", storage_bytes=100))
        resp = await http.post(
            "/internal/files",
            files={"file": ("out.jsonl", b'{"id": 1}\n{"id": 2}\n')},
            data={"purpose": "batch_output"},
            headers=auth_headers(who),
        )
        assert resp.status_code == 200, resp.text


async def test_a_plans_vector_stores_limit(
    app: FastAPI, settings: RagSettings, redis: Redis
) -> None:
    settings.org_max_vector_stores = 100
    who = principal()
    await publish(redis, who.org_id, plan("tiny", vector_stores=1))
    client = sdk_for(app, who)
    await client.vector_stores.create(name="1")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.vector_stores.create(name="2")
    assert exc.value.code == "quota_exceeded"
    assert exc.value.body["type"] == "permission_error"  # type: ignore[index]
    assert "vector_stores" in str(exc.value) and "of 1 vector stores" in str(exc.value)
    assert len((await client.vector_stores.list()).data) == 1
    await publish(redis, who.org_id, plan("more", vector_stores=2))
    await client.vector_stores.create(name="2")


async def test_the_default_plan_applies_to_organizations_billing_has_not_seen(
    app: FastAPI, redis: Redis
) -> None:
    await publish(redis, None, plan("free", vector_stores=0))
    with pytest.raises(openai.PermissionDeniedError):
        await sdk_for(app, principal()).vector_stores.create(name="1")


async def test_without_entitlements_the_settings_apply(
    app: FastAPI, settings: RagSettings, redis: Redis
) -> None:
    assert await redis.keys("aistack:entitlements:*") == []  # billing not deployed
    settings.org_max_storage_bytes = 100
    settings.org_max_vector_stores = 1
    client = sdk_for(app, principal())
    await client.files.create(file=("a.txt", b"a" * 100), purpose="assistants")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.files.create(file=("b.txt", b"b"), purpose="assistants")
    assert "of 100 bytes" in str(exc.value)
    await client.vector_stores.create(name="1")
    with pytest.raises(openai.PermissionDeniedError):
        await client.vector_stores.create(name="2")


async def test_redis_unreachable_falls_back_to_the_settings(
    tmp_path: Path, db: AsyncConnection
) -> None:
    """No plan can be read and none was read before: the settings, not a failed upload."""
    settings = rag_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    settings.org_max_storage_bytes = 50
    rag_app = build_app(settings)
    async with running(rag_app):
        AppState.of_app(rag_app).db = Database.joined(db)
        client = sdk_for(rag_app, principal())
        await client.files.create(file=("a.txt", b"a" * 50), purpose="assistants")
        with pytest.raises(openai.PermissionDeniedError) as exc:
            await client.files.create(file=("b.txt", b"b"), purpose="assistants")
        assert exc.value.code == "quota_exceeded"


async def test_a_frozen_account_uploads_and_ingests_nothing_and_still_reads(
    app: FastAPI, redis: Redis
) -> None:
    who = principal()
    assert who.org_id is not None
    client = sdk_for(app, who)
    kept = await client.files.create(
        file=("a.txt", b"Kept before the freeze."), purpose="assistants"
    )
    store = await client.vector_stores.create(name="kb")
    await publish(redis, who.org_id, Entitlements(plan="pro", status="frozen"))

    def frozen(exc: openai.APIStatusError) -> None:
        assert exc.status_code == 402 and exc.code == "account_frozen"
        assert "payment is overdue" in exc.message

    with pytest.raises(openai.APIStatusError) as caught:
        await client.files.create(file=("b.txt", b"new"), purpose="assistants")
    frozen(caught.value)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.vector_stores.files.create(vector_store_id=store.id, file_id=kept.id)
    frozen(caught.value)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[kept.id])
    frozen(caught.value)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.vector_stores.create(name="more", file_ids=[kept.id])
    frozen(caught.value)
    # nothing was written; what is there reads as before
    assert [f.id for f in (await client.files.list()).data] == [kept.id]
    assert (await client.files.content(kept.id)).content == b"Kept before the freeze."
    assert [s.id for s in (await client.vector_stores.list()).data] == [store.id]
    assert (await client.vector_stores.files.list(vector_store_id=store.id)).data == []

    # paid: back to work
    await publish(redis, who.org_id, Entitlements(plan="pro"))
    attached = await client.vector_stores.files.create(vector_store_id=store.id, file_id=kept.id)
    assert attached.status == "in_progress"
