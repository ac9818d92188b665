"""Queries of vector stores, their files and file batches (an organization's own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import func, select, text, update

from libs.orm import Repository
from services.rag.core.pages import Order, keyset
from services.rag.models import Chunk, File, FileBatch, VectorStore, VectorStoreFile

STATUSES = ("in_progress", "completed", "failed", "cancelled")


def empty_counts() -> dict[str, int]:
    return {**dict.fromkeys(STATUSES, 0), "total": 0}


class VectorStoreRepository(Repository[VectorStore]):
    model = VectorStore

    async def get_for_org(self, org_id: uuid.UUID, store_id: uuid.UUID) -> VectorStore | None:
        stmt = select(VectorStore).where(VectorStore.id == store_id, VectorStore.org_id == org_id)
        return (await self.session.scalars(stmt)).one_or_none()

    async def lock_for_org(self, org_id: uuid.UUID, store_id: uuid.UUID) -> VectorStore | None:
        stmt = (
            select(VectorStore)
            .where(VectorStore.id == store_id, VectorStore.org_id == org_id)
            .with_for_update()
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(
        self,
        org_id: uuid.UUID,
        *,
        limit: int,
        order: Order,
        after: uuid.UUID | None,
        before: uuid.UUID | None,
    ) -> list[VectorStore]:
        where, order_by = keyset(VectorStore.id, order, after, before)
        stmt = (
            select(VectorStore)
            .where(VectorStore.org_id == org_id, *where)
            .order_by(order_by)
            .limit(limit + 1)
        )
        return list((await self.session.scalars(stmt)).all())

    async def count_for_org(self, org_id: uuid.UUID) -> int:
        stmt = select(func.count()).where(VectorStore.org_id == org_id)
        return int((await self.session.execute(stmt)).scalar_one())

    async def lock_org(self, org_id: uuid.UUID) -> None:
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"rag-stores:{org_id}"},
        )

    async def stats(
        self, store_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[dict[str, int], int]]:
        """Per store: its files counted by status, and its usage in bytes."""
        ids = list(store_ids)
        out: dict[uuid.UUID, tuple[dict[str, int], int]] = {i: (empty_counts(), 0) for i in ids}
        if not ids:
            return out
        stmt = (
            select(
                VectorStoreFile.vector_store_id,
                VectorStoreFile.status,
                func.count(),
                func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0),
            )
            .where(VectorStoreFile.vector_store_id.in_(ids))
            .group_by(VectorStoreFile.vector_store_id, VectorStoreFile.status)
        )
        for store_id, status, count, used in (await self.session.execute(stmt)).all():
            counts, total = out[store_id]
            counts[status] = counts.get(status, 0) + int(count)
            counts["total"] += int(count)
            out[store_id] = (counts, total + int(used))
        return out


class StoreFileRepository(Repository[VectorStoreFile]):
    model = VectorStoreFile

    async def get(  # type: ignore[override]
        self, store_id: uuid.UUID, file_id: uuid.UUID
    ) -> VectorStoreFile | None:
        return await self.session.get(VectorStoreFile, (store_id, file_id))

    async def lock(self, store_id: uuid.UUID, file_id: uuid.UUID) -> VectorStoreFile | None:
        stmt = (
            select(VectorStoreFile)
            .where(VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id == file_id)
            .with_for_update()
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(
        self,
        store_id: uuid.UUID,
        *,
        limit: int,
        order: Order,
        after: uuid.UUID | None,
        before: uuid.UUID | None,
        status: str | None,
        batch_id: uuid.UUID | None = None,
    ) -> list[VectorStoreFile]:
        where, order_by = keyset(VectorStoreFile.file_id, order, after, before)
        stmt = select(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id, *where)
        if status:
            stmt = stmt.where(VectorStoreFile.status == status)
        if batch_id is not None:
            stmt = stmt.where(VectorStoreFile.batch_id == batch_id)
        stmt = stmt.order_by(order_by).limit(limit + 1)
        return list((await self.session.scalars(stmt)).all())

    async def existing(
        self, store_id: uuid.UUID, file_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, VectorStoreFile]:
        if not file_ids:
            return {}
        stmt = (
            select(VectorStoreFile)
            .where(
                VectorStoreFile.vector_store_id == store_id,
                VectorStoreFile.file_id.in_(file_ids),
            )
            .with_for_update()
        )
        return {f.file_id: f for f in (await self.session.scalars(stmt)).all()}

    async def batch_counts(self, batch_id: uuid.UUID) -> dict[str, int]:
        stmt = (
            select(VectorStoreFile.status, func.count())
            .where(VectorStoreFile.batch_id == batch_id)
            .group_by(VectorStoreFile.status)
        )
        counts = empty_counts()
        for status, count in (await self.session.execute(stmt)).all():
            counts[status] = int(count)
            counts["total"] += int(count)
        return counts

    async def cancel_batch(self, batch_id: uuid.UUID) -> int:
        """Every file of the batch still in progress is cancelled (its job stops at its next
        step); returns how many."""
        result = await self.session.execute(
            update(VectorStoreFile)
            .where(VectorStoreFile.batch_id == batch_id, VectorStoreFile.status == "in_progress")
            .values(status="cancelled", lease_until=None, updated_at=func.now())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def content(self, sf: VectorStoreFile, offset: int, limit: int) -> list[tuple[str, str]]:
        """The searchable chunks' (headings, text), in order."""
        stmt = (
            select(Chunk.headings, Chunk.text)
            .where(
                Chunk.vector_store_id == sf.vector_store_id,
                Chunk.file_id == sf.file_id,
                Chunk.generation == sf.generation,
            )
            .order_by(Chunk.seq)
            .offset(offset)
            .limit(limit + 1)
        )
        return [(h, t) for h, t in (await self.session.execute(stmt)).all()]

    async def filenames(self, file_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        if not file_ids:
            return {}
        stmt = select(File.id, File.filename).where(File.id.in_(file_ids))
        return dict((await self.session.execute(stmt)).all())


class FileBatchRepository(Repository[FileBatch]):
    model = FileBatch

    async def get_in_store(
        self, org_id: uuid.UUID, store_id: uuid.UUID, batch_id: uuid.UUID
    ) -> FileBatch | None:
        stmt = select(FileBatch).where(
            FileBatch.id == batch_id,
            FileBatch.vector_store_id == store_id,
            FileBatch.org_id == org_id,
        )
        return (await self.session.scalars(stmt)).one_or_none()
