"""auth: external identities (OIDC, WeChat, WeCom); users without an email

Revision ID: auth_0002
Revises: auth_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0002"
down_revision: str | None = "auth_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "auth"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.alter_column("users", "email", existing_type=sa.String(320), nullable=True, schema=S)
    op.create_table(
        "identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("last_login_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            [f"{S}.users.id"],
            ondelete="CASCADE",
            name=op.f("fk_identities_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("provider", "subject", name=op.f("uq_identities_provider_subject")),
        schema=S,
    )
    op.create_index(op.f("ix_auth_identities_user_id"), "identities", ["user_id"], schema=S)


def downgrade() -> None:
    op.drop_table("identities", schema=S)
    # accounts without an address cannot survive the old schema
    op.execute("DELETE FROM auth.users WHERE email IS NULL")
    op.alter_column("users", "email", existing_type=sa.String(320), nullable=False, schema=S)
