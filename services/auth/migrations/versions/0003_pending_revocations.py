"""auth: pending_revocations (session revocations not yet announced in Redis)

Revision ID: auth_0003
Revises: auth_0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0003"
down_revision: str | None = "auth_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "auth"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pending_revocations",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("marker_expires_at", TZ, nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_pending_revocations")),
        schema=S,
    )
    op.create_index(
        op.f("ix_auth_pending_revocations_created_at"),
        "pending_revocations",
        ["created_at"],
        schema=S,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_auth_pending_revocations_created_at"), table_name="pending_revocations", schema=S
    )
    op.drop_table("pending_revocations", schema=S)
