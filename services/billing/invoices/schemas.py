"""What the invoices routes answer: Stripe's invoices as mirrored locally."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InvoiceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Stripe's invoice id (in_...)")
    number: str | None
    status: str | None = Field(description="draft, open, paid, void or uncollectible")
    currency: str | None
    total: int = Field(description="In the currency's smallest unit (cents)")
    amount_due: int = Field(description="In the currency's smallest unit (cents)")
    amount_paid: int
    created: datetime
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None = Field(description="Stripe's page to see and pay it")
    invoice_pdf: str | None = Field(description="The invoice as a PDF")


class InvoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InvoiceOut]
    has_more: bool = Field(description="More (older) invoices follow: pass the last id as after")
