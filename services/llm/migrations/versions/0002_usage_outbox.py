"""llm: usage outbox (usage events kept in PostgreSQL while Redis is unreachable)

Revision ID: llm_0002
Revises: llm_0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "llm_0002"
down_revision: str | None = "llm_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "llm"


def upgrade() -> None:
    op.create_table(
        "usage_outbox",
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("job", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_usage_outbox")),
        schema=S,
    )
    op.create_index("ix_llm_usage_outbox_created_at", "usage_outbox", ["created_at"], schema=S)


def downgrade() -> None:
    op.drop_index("ix_llm_usage_outbox_created_at", table_name="usage_outbox", schema=S)
    op.drop_table("usage_outbox", schema=S)
