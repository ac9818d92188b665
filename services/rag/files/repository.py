"""Queries of files (an organization's, never expired ones)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, or_, select, text

from libs.orm import Repository
from services.rag.core.pages import Order, keyset
from services.rag.models import File, StorageDeletion


def live(now: datetime) -> ColumnElement[bool]:
    """Files that have not expired (an expired file is gone at once, before the purge)."""
    return or_(File.expires_at.is_(None), File.expires_at > now)


class FileRepository(Repository[File]):
    model = File

    async def get_for_org(
        self, org_id: uuid.UUID, file_id: uuid.UUID, now: datetime
    ) -> File | None:
        stmt = select(File).where(File.id == file_id, File.org_id == org_id, live(now))
        return (await self.session.scalars(stmt)).one_or_none()

    async def get_many(
        self, org_id: uuid.UUID, file_ids: list[uuid.UUID], now: datetime
    ) -> dict[uuid.UUID, File]:
        if not file_ids:
            return {}
        stmt = select(File).where(File.id.in_(file_ids), File.org_id == org_id, live(now))
        return {f.id: f for f in (await self.session.scalars(stmt)).all()}

    async def page(
        self,
        org_id: uuid.UUID,
        now: datetime,
        *,
        purpose: str | None,
        limit: int,
        order: Order,
        after: uuid.UUID | None,
    ) -> list[File]:
        where, order_by = keyset(File.id, order, after, None)
        stmt = select(File).where(File.org_id == org_id, live(now), *where)
        if purpose:
            stmt = stmt.where(File.purpose == purpose)
        stmt = stmt.order_by(order_by).limit(limit + 1)
        return list((await self.session.scalars(stmt)).all())

    async def lock_org(self, org_id: uuid.UUID) -> None:
        """Serialise this organization's uploads until commit (the quota check below is then
        exact under concurrency)."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"rag-files:{org_id}"},
        )

    async def usage(self, org_id: uuid.UUID) -> tuple[int, int]:
        """(files, bytes) the organization keeps."""
        stmt = select(func.count(), func.coalesce(func.sum(File.bytes), 0)).where(
            File.org_id == org_id
        )
        count, total = (await self.session.execute(stmt)).one()
        return int(count), int(total)

    async def remove(self, file: File, now: datetime) -> None:
        """Delete the row and owe storage its bytes, in this transaction."""
        await self.session.merge(StorageDeletion(storage_key=file.storage_key, not_before=now))
        await self.session.delete(file)
        await self.session.flush()

    async def expired(self, now: datetime, limit: int) -> list[File]:
        stmt = (
            select(File)
            .where(File.expires_at.is_not(None), File.expires_at <= now)
            .order_by(File.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def pending_deletions(self, now: datetime, limit: int) -> list[str]:
        stmt = (
            select(StorageDeletion.storage_key)
            .where(StorageDeletion.not_before <= now)
            .order_by(StorageDeletion.not_before)
            .limit(limit)
        )
        return list((await self.session.scalars(stmt)).all())

    async def deletion_done(self, keys: list[str]) -> None:
        await self.session.execute(
            delete(StorageDeletion).where(StorageDeletion.storage_key.in_(keys))
        )
