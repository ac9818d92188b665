"""Stored ``/v1/responses`` answers in ``llm.responses`` (see :class:`StoredResponse`).

Imported only when a response is stored or read (``services.llm.responses`` imports it inside
its functions), so an llm process that never does so never loads SQLAlchemy.

Each row carries the resolved chat history up to and including its own output: a later turn
naming it with ``previous_response_id`` reads one row by primary key, whatever the chain's
length, and deleting or expiring an older response of the chain does not break later ones.
The price is storage: turn *n* of a chain repeats the *n - 1* turns before it (bounded by
the TTL).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import session_scope
from services.llm.models import StoredResponse

Sessions = Any  # an async_sessionmaker or libs.sessions.LazySessionFactory


def now() -> datetime:
    return datetime.now(UTC)


async def save(
    sessions: Sessions,
    *,
    response: dict[str, Any],
    org_id: uuid.UUID,
    user_id: uuid.UUID | None,
    key_id: uuid.UUID | None,
    input_items: list[dict[str, Any]],
    history: list[dict[str, Any]],
    ttl_days: int,
) -> None:
    """Insert one response; an id already stored (an idempotent replay) is left as it is."""
    created = now()
    stmt = (
        insert(StoredResponse)
        .values(
            id=response["id"],
            org_id=org_id,
            user_id=user_id,
            key_id=key_id,
            model=str(response.get("model") or ""),
            previous_response_id=response.get("previous_response_id"),
            response=response,
            input_items=input_items,
            history=history,
            created_at=created,
            expires_at=created + timedelta(days=ttl_days),
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    async with session_scope(sessions) as session:
        await session.execute(stmt)


def _visible(org_id: uuid.UUID, response_id: str) -> Any:
    return (
        (StoredResponse.id == response_id)
        & (StoredResponse.org_id == org_id)
        & (StoredResponse.expires_at > func.now())
    )


async def load(sessions: Sessions, org_id: uuid.UUID, response_id: str) -> StoredResponse | None:
    """The organization's response, unless it is unknown, another's or expired."""
    session: AsyncSession
    async with sessions() as session:
        row: StoredResponse | None = await session.scalar(
            select(StoredResponse).where(_visible(org_id, response_id))
        )
        return row


async def remove(sessions: Sessions, org_id: uuid.UUID, response_id: str) -> bool:
    async with session_scope(sessions) as session:
        result = await session.execute(delete(StoredResponse).where(_visible(org_id, response_id)))
        return bool(getattr(result, "rowcount", 0))


async def purge(sessions: Sessions, *, batch: int = 1000) -> int:
    """Delete expired rows, ``batch`` at a time; the number deleted."""
    total = 0
    while True:
        async with session_scope(sessions) as session:
            ids = (
                select(StoredResponse.id)
                .where(StoredResponse.expires_at <= func.now())
                .limit(batch)
                .scalar_subquery()
            )
            result = await session.execute(delete(StoredResponse).where(StoredResponse.id.in_(ids)))
        deleted = int(getattr(result, "rowcount", 0) or 0)
        total += deleted
        if deleted < batch:
            return total
