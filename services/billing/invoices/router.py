"""HTTP routes of invoices (the local mirror of Stripe's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.billing.invoices.schemas import InvoiceList
from services.billing.invoices.service import InvoiceService

router = APIRouter(prefix="/v1/billing", tags=["billing"])


async def get_invoice_service(session: SessionDep, principal: PrincipalDep) -> InvoiceService:
    return InvoiceService(session, principal)


InvoiceServiceDep = Annotated[InvoiceService, Depends(get_invoice_service)]


@router.get(
    "/invoices",
    response_model=InvoiceList,
    summary="The organization's invoices (Stripe's hosted page and PDF), newest first",
    dependencies=[require_scope(Scope.BILLING_READ)],
)
async def list_invoices(
    service: InvoiceServiceDep,
    limit: Annotated[int, Query(ge=1, le=100, description="At most this many")] = 20,
    after: Annotated[
        str | None,
        Query(min_length=1, max_length=255, description="The last invoice id of the page before"),
    ] = None,
) -> object:
    return await service.page(limit, after)
