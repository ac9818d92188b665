"""Stored ``/v1/responses`` answers in ``llm.responses`` (see :class:`StoredResponse`).

Imported only when a response is stored or read (:mod:`.store` imports it inside its
functions), so an llm process that never does so never loads SQLAlchemy.

Each row carries the resolved chat history up to and including its own output: a later turn
naming it with ``previous_response_id`` reads one row by primary key, whatever the chain's
length, and deleting or expiring an older response of the chain does not break later ones.
The price is storage: turn *n* of a chain repeats the *n - 1* turns before it (bounded by
the TTL).

``item_reference`` inputs are looked up with :func:`find_items`: by primary key when the id
names its response (every id aistack gives an item does), else through the GIN index over
each row's item ids (migration llm_0004).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Text, cast, delete, func, literal, literal_column, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import session_scope
from services.llm.models import RESPONSE_ITEM_IDS, StoredResponse

Sessions = Any  # a libs.db.Database (or any session factory)


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


# the ids of a row's items, as the item-id index has them (the same expression, or no index)
_ITEM_IDS = literal_column(RESPONSE_ITEM_IDS, JSONB)
_ITEM_PATH: Any = literal_column("'$[*] ? (@.id == $id)'::jsonpath")


def _item_by_id(org_id: uuid.UUID, item_id: str) -> Any:
    """The item of the organization's newest visible row holding ``item_id`` (index scan)."""
    wanted = cast(literal(item_id), Text)
    items = StoredResponse.response["output"].op("||", return_type=JSONB)(
        StoredResponse.input_items
    )
    return (
        select(
            func.jsonb_path_query_first(
                items, _ITEM_PATH, func.jsonb_build_object("id", wanted), type_=JSONB
            )
        )
        .where(
            _ITEM_IDS.op("@>", is_comparison=True)(func.jsonb_build_array(wanted))
            & (StoredResponse.org_id == org_id)
            & (StoredResponse.expires_at > func.now())
        )
        .order_by(StoredResponse.created_at.desc())
        .limit(1)
    )


async def find_items(
    sessions: Sessions,
    org_id: uuid.UUID,
    item_ids: list[str],
    owners: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Items (output or input) of the organization's visible responses, by id; ids not found
    are missing from the answer. ``owners`` maps an item id to the response id it names:
    those rows are read first, by primary key; other ids go through the item-id index."""
    found: dict[str, dict[str, Any]] = {}
    wanted = set(item_ids)
    session: AsyncSession
    async with sessions() as session:
        if owners:
            rows = await session.execute(
                select(StoredResponse.response["output"], StoredResponse.input_items).where(
                    StoredResponse.id.in_(sorted(set(owners.values())))
                    & (StoredResponse.org_id == org_id)
                    & (StoredResponse.expires_at > func.now())
                )
            )
            for output, inputs in rows:
                for item in [*(output or []), *(inputs or [])]:
                    item_id = item.get("id") if isinstance(item, dict) else None
                    if item_id in wanted and item_id not in found:
                        found[item_id] = item
        for item_id in item_ids:
            if item_id in found:
                continue
            item = await session.scalar(_item_by_id(org_id, item_id))
            if isinstance(item, dict):
                found[item_id] = item
    return found


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
