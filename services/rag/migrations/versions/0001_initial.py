"""rag: knowledge bases

Revision ID: rag_0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "rag_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # pgvector powers retrieval; the extension is database-wide, so it is never dropped here
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("embedding_model", sa.String(200), nullable=False, server_default="embed"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_bases")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_knowledge_bases_org_id_name")),
        schema="rag",
    )
    op.create_index(
        op.f("ix_rag_knowledge_bases_org_id"), "knowledge_bases", ["org_id"], schema="rag"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_rag_knowledge_bases_org_id"), table_name="knowledge_bases", schema="rag")
    op.drop_table("knowledge_bases", schema="rag")
