"""llm: stored responses of /v1/responses (store, previous_response_id, GET/DELETE)

Revision ID: llm_0003
Revises: llm_0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "llm_0003"
down_revision: str | None = "llm_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "llm"


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("previous_response_id", sa.String(80), nullable=True),
        sa.Column("response", postgresql.JSONB(), nullable=False),
        sa.Column("input_items", postgresql.JSONB(), nullable=False),
        sa.Column("history", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_responses")),
        schema=S,
    )
    op.create_index("ix_llm_responses_expires_at", "responses", ["expires_at"], schema=S)
    op.create_index("ix_llm_responses_org_created", "responses", ["org_id", "created_at"], schema=S)


def downgrade() -> None:
    op.drop_index("ix_llm_responses_org_created", table_name="responses", schema=S)
    op.drop_index("ix_llm_responses_expires_at", table_name="responses", schema=S)
    op.drop_table("responses", schema=S)
