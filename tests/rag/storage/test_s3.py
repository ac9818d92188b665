"""The S3 backend against a real S3-compatible server on loopback (moto's server mode): upload
(a multipart one past 5 MB), download, ingestion reading from the bucket, delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from libs.testing import principal, running
from services.rag.app import build_app
from services.rag.storage.base import s3_storage
from tests.support.stacks.rag import rag_settings, run_worker, sdk_for

BUCKET = "aistack-test-files"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, Any]]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **CREDENTIALS)
    client.create_bucket(Bucket=BUCKET)
    yield url, client
    server.stop()


def keys(client: Any) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


async def test_storage_round_trip(s3: tuple[str, Any]) -> None:
    url, client = s3
    storage = s3_storage(
        BUCKET,
        endpoint_url=url,
        access_key_id="testing",
        secret_access_key="testing",
        prefix="unit",
    )
    big = bytes(range(256)) * (6 * 4096 + 7)  # 6 MB and a bit: a multipart upload

    async def chunks() -> Any:
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    await storage.put("org/one", chunks())
    assert "unit/org/one" in keys(client)
    assert b"".join([c async for c in await storage.stream("org/one")]) == big
    assert await storage.exists("org/one")
    await storage.delete("org/one")
    await storage.delete("org/one")  # already gone: fine
    assert not await storage.exists("org/one")


async def test_files_and_ingestion_on_s3(s3: tuple[str, Any], tmp_path: Path, llm_url: str) -> None:
    url, client = s3
    settings = rag_settings(
        tmp_path,
        storage_backend="s3",
        s3_bucket=BUCKET,
        s3_endpoint_url=url,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_prefix="app",
        llm_url=llm_url,
    )
    app: FastAPI = build_app(settings)
    async with running(app):
        sdk = sdk_for(app, principal())
        f = await sdk.files.create(
            file=("s3.md", b"# S3\n\nObjects live in buckets."), purpose="assistants"
        )
        assert any(k.startswith("app/") for k in keys(client))
        assert (await sdk.files.content(f.id)).content == b"# S3\n\nObjects live in buckets."
        vs = await sdk.vector_stores.create(file_ids=[f.id])
        await run_worker(settings)
        sf = await sdk.vector_stores.files.retrieve(file_id=f.id, vector_store_id=vs.id)
        assert sf.status == "completed", sf.last_error
        await sdk.files.delete(f.id)
        assert not [k for k in keys(client) if k.startswith("app/")]
    assert not (tmp_path / "files").exists() or not any((tmp_path / "files").rglob("*.*"))
