"""Invoices mirrored from Stripe: each invoice.* webhook event re-reads the invoice's current
state from Stripe (so events arriving late or out of order never roll it back) and stores it;
``GET /v1/billing/invoices`` lists the mirror, never Stripe. Without a Stripe API key (only a
webhook secret) the event's own invoice is stored unless a newer event's already was."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import ValidationFailed
from libs.identity import Principal
from services.billing.invoices.repository import InvoiceRepository
from services.billing.invoices.schemas import InvoiceList, InvoiceOut


def _at(epoch: Any) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), UTC) if epoch is not None else None


def _id(value: Any) -> str | None:
    """An id, or an expanded object's id."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value)[:255] if value else None


def _subscription_of(obj: dict[str, Any]) -> str | None:
    """The invoice's subscription (``subscription`` before API 2025-03-31, ``parent`` after)."""
    parent = (obj.get("parent") or {}).get("subscription_details") or {}
    return _id(obj.get("subscription") or parent.get("subscription"))


def _url(value: Any) -> str | None:
    return str(value)[:2048] if value else None


async def sync_invoice(
    session: AsyncSession,
    org_id: uuid.UUID,
    obj: dict[str, Any],
    event_at: datetime,
    client: stripe.StripeClient | None,
) -> str:
    """Store the invoice an event names, as it is now; what happened."""
    invoice_id = _id(obj.get("id"))
    if invoice_id is None:
        return "no invoice id"
    repo = InvoiceRepository(session)
    current = obj
    if client is not None:
        try:
            found = await asyncio.to_thread(client.v1.invoices.retrieve, invoice_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status != 404:
                raise
            await repo.remove(invoice_id)  # a deleted draft
            return "invoice deleted"
        current = found.to_dict()
    else:
        row = await repo.by_id(invoice_id)
        if row is not None and row.event_at is not None and event_at < row.event_at:
            return "invoice: older than the state stored"
    await repo.upsert(
        {
            "id": invoice_id,
            "org_id": org_id,
            "customer": _id(current.get("customer")),
            "subscription": _subscription_of(current),
            "number": _id(current.get("number")),
            "status": str(current.get("status") or "")[:32] or None,
            "currency": str(current.get("currency") or "")[:8] or None,
            "total": int(current.get("total") or 0),
            "amount_due": int(current.get("amount_due") or 0),
            "amount_paid": int(current.get("amount_paid") or 0),
            "period_start": _at(current.get("period_start")),
            "period_end": _at(current.get("period_end")),
            "hosted_invoice_url": _url(current.get("hosted_invoice_url")),
            "invoice_pdf": _url(current.get("invoice_pdf")),
            "created": _at(current.get("created")) or event_at,
            "event_at": event_at,
        }
    )
    return f"invoice {invoice_id} {current.get('status')}"


class InvoiceService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.repo = InvoiceRepository(session)
        self.org_id = principal.require_org()

    async def page(self, limit: int, after: str | None) -> InvoiceList:
        """The organization's invoices, newest first; ``after``: the last id of the page
        before (Stripe's ``starting_after``)."""
        cursor = None
        if after is not None:
            cursor = await self.repo.of_org(self.org_id, after)
            if cursor is None:
                raise ValidationFailed(
                    f"No invoice {after!r} in this organization", code="invalid_cursor"
                )
        rows = await self.repo.page(self.org_id, limit + 1, cursor)
        return InvoiceList(
            data=[InvoiceOut.model_validate(r) for r in rows[:limit]],
            has_more=len(rows) > limit,
        )
