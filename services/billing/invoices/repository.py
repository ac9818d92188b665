"""Data access of mirrored invoices."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from libs.orm import Repository
from services.billing.models import Invoice


class InvoiceRepository(Repository[Invoice]):
    model = Invoice

    async def by_id(self, invoice_id: str) -> Invoice | None:
        return await self.session.scalar(
            select(Invoice).where(Invoice.id == invoice_id).with_for_update()
        )

    async def upsert(self, values: dict[str, Any]) -> None:
        stmt = insert(Invoice).values(**values)
        changed = {k: stmt.excluded[k] for k in values if k != "id"}
        await self.session.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))

    async def remove(self, invoice_id: str) -> None:
        await self.session.execute(delete(Invoice).where(Invoice.id == invoice_id))

    async def page(self, org_id: uuid.UUID, limit: int, after: Invoice | None) -> list[Invoice]:
        """Up to ``limit`` invoices of the organization, newest first, older than ``after``."""
        stmt = select(Invoice).where(Invoice.org_id == org_id)
        if after is not None:
            stmt = stmt.where(tuple_(Invoice.created, Invoice.id) < (after.created, after.id))
        stmt = stmt.order_by(Invoice.created.desc(), Invoice.id.desc()).limit(limit)
        return list(await self.session.scalars(stmt))

    async def of_org(self, org_id: uuid.UUID, invoice_id: str) -> Invoice | None:
        return await self.session.scalar(
            select(Invoice).where(Invoice.org_id == org_id, Invoice.id == invoice_id)
        )
