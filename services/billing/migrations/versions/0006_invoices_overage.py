"""billing: invoices mirrored from Stripe, and overage reported to Stripe once per month

Revision ID: billing_0006
Revises: billing_0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "billing_0006"
down_revision: str | None = "billing_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(18, 8)


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("customer", sa.String(255), nullable=True),
        sa.Column("subscription", sa.String(255), nullable=True),
        sa.Column("number", sa.String(255), nullable=True),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("currency", sa.String(8), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hosted_invoice_url", sa.String(2048), nullable=True),
        sa.Column("invoice_pdf", sa.String(2048), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "synced_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        schema="billing",
    )
    op.create_index(
        "ix_billing_invoices_org_id_created",
        "invoices",
        ["org_id", "created", "id"],
        schema="billing",
    )
    op.create_table(
        "overage_reports",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("spend_usd", MONEY, nullable=False),
        sa.Column("included_usd", MONEY, nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("stripe_invoice_item", sa.String(255), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("meter_event", sa.String(255), nullable=True),
        sa.Column("meter_reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("org_id", "period", name=op.f("pk_overage_reports")),
        schema="billing",
    )


def downgrade() -> None:
    op.drop_table("overage_reports", schema="billing")
    op.drop_index("ix_billing_invoices_org_id_created", table_name="invoices", schema="billing")
    op.drop_table("invoices", schema="billing")
