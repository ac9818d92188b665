"""billing: usage events record the prompt version that served them

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "billing_0002"
down_revision: str | None = "billing_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # nullable, no default: instant on a large ledger, and older rows simply have none
    op.add_column(
        "usage_events",
        sa.Column("prompt_version_id", sa.String(64), nullable=True),
        schema="billing",
    )


def downgrade() -> None:
    op.drop_column("usage_events", "prompt_version_id", schema="billing")
