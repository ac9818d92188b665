"""auth: api_keys.monthly_budget_usd (a key's own monthly spend budget, enforced by the llm)

Revision ID: auth_0004
Revises: auth_0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0004"
down_revision: str | None = "auth_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "auth"


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("monthly_budget_usd", sa.Numeric(18, 8), nullable=True), schema=S
    )


def downgrade() -> None:
    op.drop_column("api_keys", "monthly_budget_usd", schema=S)
