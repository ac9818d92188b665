"""libs.usage as a contract any service emits: the kinds billing accepts, the wire format
kept, an outbox table any service declares in its own schema, and the worker's replay loop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal

import orjson
from redis.asyncio import Redis
from sqlalchemy import String, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

from libs.orm import TYPE_ANNOTATION_MAP, service_metadata
from libs.usage import (
    USAGE_KINDS,
    USAGE_STREAM,
    UsageEvent,
    UsageOutbox,
    prepare_usage,
    replay_outbox_forever,
)
from libs.usage_table import UsageOutboxTable
from services.billing.models import UsageEventRecord

ORG = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


def test_every_kind_is_accepted_and_fits_the_ledger() -> None:
    column = UsageEventRecord.__table__.c.kind.type
    assert isinstance(column, String) and column.length is not None
    assert {"chat", "embedding", "completion", "response", "batch", "storage"} <= set(USAGE_KINDS)
    for kind in USAGE_KINDS:
        assert len(kind) <= column.length
        event = UsageEvent(request_id="r", org_id=ORG, model="m", provider="p", kind=kind)
        # what billing's consumer does with the stream entry
        assert UsageEvent.model_validate(event.payload()).kind == kind
        assert event.job_id == f"usage:{kind}:r"


def test_the_wire_format_of_an_llm_event_is_unchanged() -> None:
    event = UsageEvent(
        request_id="chatcmpl-1",
        org_id=ORG,
        model="gpt-4o-mini",
        provider="openai",
        prompt_tokens=3,
        completion_tokens=5,
        cost_usd=Decimal("0.00000123"),
        ttft_ms=7,
    )
    payload = event.payload()
    assert set(payload) == {
        "request_id",
        "org_id",
        "user_id",
        "key_id",
        "model",
        "provider",
        "kind",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
        "cached",
        "status",
        "created_at",
        "prompt_version_id",
    }
    assert (payload["kind"], payload["cost_usd"]) == ("chat", "0.00000123")
    # the fields added later travel only when set
    batch = event.model_copy(update={"batch": True, "cached_tokens": 2}).payload()
    assert (batch["batch"], batch["cached_tokens"]) == (True, 2)


def test_a_service_declares_its_outbox_in_its_own_schema() -> None:
    class Base(DeclarativeBase):
        metadata = service_metadata("demo")
        type_annotation_map = TYPE_ANNOTATION_MAP

    class DemoOutbox(UsageOutboxTable, Base):
        pass

    table = Base.metadata.tables["demo.usage_outbox"]
    assert (table.schema, table.name) == ("demo", "usage_outbox")
    assert [c.name for c in table.primary_key.columns] == ["job_id"]
    assert {c.name for c in table.columns} == {"job_id", "job", "created_at"}
    assert {i.name for i in table.indexes} == {"ix_demo_usage_outbox_created_at"}


async def _on_stream(redis: Redis, key: str) -> bool:
    for _, fields in await redis.xrange(USAGE_STREAM):
        event = orjson.loads(fields[b"e"])
        if f"usage:{event['kind']}:{event['request_id']}" == key:
            return True
    return False


async def test_the_worker_loop_sends_what_a_stopped_process_left(
    engine: AsyncEngine, redis: Redis
) -> None:
    outbox = UsageOutbox("llm", lambda: async_sessionmaker(engine, expire_on_commit=False))
    event = UsageEvent(request_id=uuid.uuid4().hex, org_id=uuid.uuid4(), model="m", provider="p")
    await outbox.put([prepare_usage(event)])
    loop = asyncio.create_task(replay_outbox_forever(outbox, redis, interval_s=0.05))
    try:
        for _ in range(100):
            if await _on_stream(redis, event.key):
                break
            await asyncio.sleep(0.05)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert await _on_stream(redis, event.key)
    async with engine.connect() as conn:
        left = await conn.scalar(
            text("SELECT count(*) FROM llm.usage_outbox WHERE job_id = :id"), {"id": event.job_id}
        )
    assert left == 0
