"""billing: Stripe webhook events (idempotency by event id) and a subscription's Stripe state

Revision ID: billing_0005
Revises: billing_0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "billing_0005"
down_revision: str | None = "billing_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
        schema="billing",
    )
    for name in ("stripe_event_at", "past_due_since"):
        op.add_column(
            "subscriptions",
            sa.Column(name, sa.DateTime(timezone=True), nullable=True),
            schema="billing",
        )


def downgrade() -> None:
    for name in ("past_due_since", "stripe_event_at"):
        op.drop_column("subscriptions", name, schema="billing")
    op.drop_table("stripe_events", schema="billing")
