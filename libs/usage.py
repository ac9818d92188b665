"""The usage event contract: what llm and rag send to billing for every metered request.

One event per (``request_id``, ``kind``); billing stores it at most once, so a producer may
send the same event again (retries, at-least-once delivery) without double counting. Events
travel on the billing queue (``aistack:queue:billing``, function ``record_usage``) with job id
``usage:<kind>:<request_id>``, so duplicates are also collapsed before they run.
"""

from __future__ import annotations

import uuid
import weakref
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from libs.queue import PreparedJob, as_arq, enqueue, enqueue_now, enqueue_prepared, prepare_job

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

BILLING_SERVICE = "billing"
RECORD_USAGE = "record_usage"


def _now() -> datetime:
    return datetime.now(UTC)


class UsageEvent(BaseModel):
    """One metered request (a chat completion or an embeddings call)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=128, description="Unique per request")
    org_id: uuid.UUID
    user_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None
    model: str = Field(max_length=200)
    provider: str = Field(max_length=64)
    kind: Literal["chat", "embedding"] = "chat"
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost_usd: Decimal = Field(default=Decimal(0), ge=0, max_digits=18, decimal_places=8)
    latency_ms: int = Field(default=0, ge=0)
    ttft_ms: int | None = Field(default=None, ge=0, description="Time to first token (streams)")
    cached: bool = False
    status: Literal["ok", "error"] = "ok"
    created_at: datetime = Field(default_factory=_now)
    prompt_version_id: str | None = Field(
        default=None, max_length=64, description="The stored prompt version that served it"
    )

    @property
    def job_id(self) -> str:
        return f"usage:{self.kind}:{self.request_id}"

    def payload(self) -> dict[str, Any]:
        """JSON-safe dict to send as the job argument (Decimal as a string, exact)."""
        return self.model_dump(mode="json")


# one queue client per Redis client: building arq's client (a Redis instance) per event was a
# measurable share of an llm call
_ARQ: weakref.WeakKeyDictionary[Redis, Redis] = weakref.WeakKeyDictionary()


def _queue_client(redis: Redis) -> Redis:
    client = _ARQ.get(redis)
    if client is None:
        client = _ARQ[redis] = as_arq(redis)
    return client


async def publish_usage(
    event: UsageEvent, redis: Redis, session: AsyncSession | None = None
) -> None:
    """Send a usage event to billing: after ``session`` commits when given, else now."""
    redis = _queue_client(redis)
    common: dict[str, Any] = {
        "service": BILLING_SERVICE,
        "function": RECORD_USAGE,
        "args": [event.payload()],
        "job_id": event.job_id,
        "org_id": event.org_id,
        "user_id": event.user_id,
    }
    if session is not None:
        await enqueue(session, redis, **common)
    else:
        await enqueue_now(redis, **common)


def prepare_usage(event: UsageEvent) -> PreparedJob:
    """Capture a usage event's job where it happens (request id, trace) to send in a batch."""
    return prepare_job(
        service=BILLING_SERVICE,
        function=RECORD_USAGE,
        args=[event.payload()],
        job_id=event.job_id,
        org_id=event.org_id,
        user_id=event.user_id,
    )


async def publish_usage_batch(jobs: list[PreparedJob], redis: Redis) -> None:
    """Send prepared usage events now, in one round trip (duplicates collapse by job id)."""
    await enqueue_prepared(redis, jobs)
