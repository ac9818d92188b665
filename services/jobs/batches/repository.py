"""Batches and their lines in PostgreSQL (``jobs.batches``, ``jobs.batch_lines``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Integer,
    String,
    Text,
    bindparam,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.jobs.models import Batch, BatchLine

# a line's result: in the output file, or in the error file
OK, ERROR = "ok", "error"

# many lines in one statement (arrays unnested: one round trip, no per-row parameters)
_SAVE = text(
    "INSERT INTO jobs.batch_lines (batch_id, line, custom_id, state, result) "
    "SELECT :b, n, c, s, r FROM unnest(:lines, :ids, :states, :results) AS t(n, c, s, r) "
    "ON CONFLICT (batch_id, line) DO UPDATE SET state = excluded.state, result = excluded.result"
).bindparams(
    bindparam("lines", type_=ARRAY(Integer)),
    bindparam("ids", type_=ARRAY(Text)),
    bindparam("states", type_=ARRAY(String)),
    bindparam("results", type_=ARRAY(Text)),
)


class BatchRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, batch: Batch) -> Batch:
        self.session.add(batch)
        await self.session.flush()
        return batch

    async def lock_org(self, org_id: uuid.UUID) -> None:
        """Serialise this organization's batch creations until commit (the count of its
        batches in progress is then exact under concurrency)."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"jobs-batches:{org_id}"},
        )

    async def count_active(self, org_id: uuid.UUID, finished: Sequence[str]) -> int:
        stmt = select(func.count()).where(Batch.org_id == org_id, Batch.status.not_in(finished))
        return int((await self.session.execute(stmt)).scalar_one())

    async def get(self, batch_id: str, org_id: uuid.UUID | None = None) -> Batch | None:
        stmt = select(Batch).where(Batch.id == batch_id)
        if org_id is not None:
            stmt = stmt.where(Batch.org_id == org_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def lock(self, batch_id: str, org_id: uuid.UUID) -> Batch | None:
        stmt = select(Batch).where(Batch.id == batch_id, Batch.org_id == org_id).with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def page(self, org_id: uuid.UUID, after: Batch | None, limit: int) -> list[Batch]:
        """The organization's batches, newest first, after ``after``; one more than
        ``limit`` when there are more."""
        stmt = select(Batch).where(Batch.org_id == org_id)
        if after is not None:
            stmt = stmt.where(tuple_(Batch.created_at, Batch.id) < (after.created_at, after.id))
        stmt = stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
        return list((await self.session.execute(stmt)).scalars())

    async def status(self, batch_id: str) -> str | None:
        stmt = select(Batch.status).where(Batch.id == batch_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def watch(self, batch_id: str) -> tuple[str, datetime] | None:
        """A running batch's status and expiry, as its run checks them."""
        stmt = select(Batch.status, Batch.expires_at).where(Batch.id == batch_id)
        row = (await self.session.execute(stmt)).one_or_none()
        return (str(row[0]), row[1]) if row is not None else None

    async def update(self, batch_id: str, **values: Any) -> None:
        await self.session.execute(update(Batch).where(Batch.id == batch_id).values(**values))

    async def move(self, batch_id: str, frm: Sequence[str], to: str, **values: Any) -> bool:
        """Set the status ``to`` if it is one of ``frm`` (whoever changed it meanwhile wins)."""
        stmt = (
            update(Batch)
            .where(Batch.id == batch_id, Batch.status.in_(frm))
            .values(status=to, **values)
            .returning(Batch.id)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none() is not None

    # --- lines

    async def line_states(self, batch_id: str) -> dict[int, str]:
        stmt = select(BatchLine.line, BatchLine.state).where(BatchLine.batch_id == batch_id)
        return {int(n): str(st) for n, st in (await self.session.execute(stmt)).all()}

    async def counts(self, batch_id: str) -> dict[str, int]:
        stmt = (
            select(BatchLine.state, func.count())
            .where(BatchLine.batch_id == batch_id)
            .group_by(BatchLine.state)
        )
        return {str(st): int(n) for st, n in (await self.session.execute(stmt)).all()}

    async def claim_through(self, batch_id: str, line: int) -> None:
        """Every line up to ``line`` may be sent from now on (before they are): a crash leaves
        them claimed, so they are never sent again."""
        await self.session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(claimed_through=func.greatest(Batch.claimed_through, line))
        )

    async def save(
        self, batch_id: str, results: Sequence[tuple[int, str | None, str, str]]
    ) -> None:
        """Record lines' results (line, custom_id, ok/error, the result line as JSON)."""
        if results:
            await self.session.execute(
                _SAVE,
                {
                    "b": batch_id,
                    "lines": [r[0] for r in results],
                    "ids": [r[1] for r in results],
                    "states": [r[2] for r in results],
                    "results": [r[3] for r in results],
                },
            )

    async def results(self, batch_id: str, state: str) -> list[str]:
        stmt = (
            select(BatchLine.result)
            .where(BatchLine.batch_id == batch_id, BatchLine.state == state)
            .order_by(BatchLine.line)
        )
        return [r for r in (await self.session.execute(stmt)).scalars() if r is not None]
