"""rag: files and vector stores replace knowledge bases

A knowledge base is a vector store now (one model, OpenAI's API): the knowledge_bases table
goes, files, vector stores, their files, file batches and chunks come.

Revision ID: rag_0002
Revises: rag_0001
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision: str = "rag_0002"
down_revision: str | None = "rag_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# HNSW indexes made now, one per common embedding dimension (all-MiniLM-L6-v2 and
# multilingual-e5-small: 384; 768; 1024; text-embedding-3-small: 1536); a store whose model
# has another dimension gets its index when its first embeddings arrive
DIMENSIONS = (384, 768, 1024, 1536)


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.drop_index(op.f("ix_rag_knowledge_bases_org_id"), table_name="knowledge_bases", schema="rag")
    op.drop_table("knowledge_bases", schema="rag")

    op.create_table(
        "files",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("storage_key", sa.String(600), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
        schema="rag",
    )
    op.create_index(op.f("ix_rag_files_org_id"), "files", ["org_id"], schema="rag")
    op.create_index(op.f("ix_rag_files_expires_at"), "files", ["expires_at"], schema="rag")
    op.create_index("ix_files_org_created", "files", ["org_id", "created_at", "id"], schema="rag")

    op.create_table(
        "storage_deletions",
        sa.Column("storage_key", sa.String(600), nullable=False),
        _ts("not_before"),
        sa.PrimaryKeyConstraint("storage_key", name=op.f("pk_storage_deletions")),
        schema="rag",
    )
    op.create_index(
        op.f("ix_rag_storage_deletions_not_before"),
        "storage_deletions",
        ["not_before"],
        schema="rag",
    )

    op.create_table(
        "vector_stores",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), nullable=False),
        sa.Column("embedding_model", sa.String(200), nullable=False),
        sa.Column("embedding_dims", sa.Integer(), nullable=True),
        sa.Column("expires_after_days", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_stores")),
        schema="rag",
    )
    op.create_index(op.f("ix_rag_vector_stores_org_id"), "vector_stores", ["org_id"], schema="rag")
    op.create_index(
        op.f("ix_rag_vector_stores_expires_at"), "vector_stores", ["expires_at"], schema="rag"
    )
    op.create_index(
        "ix_vector_stores_org_created",
        "vector_stores",
        ["org_id", "created_at", "id"],
        schema="rag",
    )

    op.create_table(
        "file_batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("vector_store_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["vector_store_id"],
            ["rag.vector_stores.id"],
            name=op.f("fk_file_batches_vector_store_id_vector_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_batches")),
        schema="rag",
    )
    op.create_index(
        op.f("ix_rag_file_batches_vector_store_id"),
        "file_batches",
        ["vector_store_id"],
        schema="rag",
    )

    op.create_table(
        "vector_store_files",
        sa.Column("vector_store_id", sa.Uuid(), nullable=False),
        sa.Column("file_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error_code", sa.String(32), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("chunking", postgresql.JSONB(), nullable=False),
        sa.Column("attributes", postgresql.JSONB(), nullable=True),
        sa.Column("usage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("pending_generation", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["rag.file_batches.id"],
            name=op.f("fk_vector_store_files_batch_id_file_batches"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["rag.files.id"],
            name=op.f("fk_vector_store_files_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vector_store_id"],
            ["rag.vector_stores.id"],
            name=op.f("fk_vector_store_files_vector_store_id_vector_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("vector_store_id", "file_id", name=op.f("pk_vector_store_files")),
        schema="rag",
    )
    op.create_index(
        op.f("ix_rag_vector_store_files_file_id"), "vector_store_files", ["file_id"], schema="rag"
    )
    op.create_index(
        op.f("ix_rag_vector_store_files_batch_id"), "vector_store_files", ["batch_id"], schema="rag"
    )
    op.create_index(
        "ix_vector_store_files_store_status",
        "vector_store_files",
        ["vector_store_id", "status"],
        schema="rag",
    )
    op.create_index(
        "ix_vector_store_files_status_lease",
        "vector_store_files",
        ["status", "lease_until"],
        schema="rag",
    )

    op.create_table(
        "chunks",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("vector_store_id", sa.Uuid(), nullable=False),
        sa.Column("file_id", sa.Uuid(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("headings", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("visible", sa.Boolean(), nullable=False),
        sa.Column("embedding", Vector(), nullable=True),
        sa.Column("dims", sa.SmallInteger(), nullable=True),
        sa.Column("tsv", postgresql.TSVECTOR(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_store_id", "file_id"],
            ["rag.vector_store_files.vector_store_id", "rag.vector_store_files.file_id"],
            name=op.f("fk_chunks_vector_store_id_vector_store_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chunks")),
        sa.UniqueConstraint(
            "vector_store_id",
            "file_id",
            "generation",
            "seq",
            name=op.f("uq_chunks_vector_store_id_file_id_generation_seq"),
        ),
        schema="rag",
    )
    op.create_index("ix_chunks_tsv", "chunks", ["tsv"], schema="rag", postgresql_using="gin")
    for d in DIMENSIONS:
        op.execute(hnsw_index_sql(d))


def hnsw_index_sql(dims: int) -> str:
    """The HNSW index of one dimension: partial on ``dims``, over the column cast to it
    (pgvector indexes need a fixed dimension; halfvec past vector's 2000)."""
    kind = "vector" if dims <= 2000 else "halfvec"
    return (
        f"CREATE INDEX IF NOT EXISTS ix_chunks_hnsw_{dims} ON rag.chunks USING hnsw "
        f"((embedding::{kind}({dims})) {kind}_cosine_ops) WHERE dims = {dims}"
    )


def downgrade() -> None:
    op.drop_table("chunks", schema="rag")
    op.drop_table("vector_store_files", schema="rag")
    op.drop_table("file_batches", schema="rag")
    op.drop_table("vector_stores", schema="rag")
    op.drop_table("storage_deletions", schema="rag")
    op.drop_table("files", schema="rag")
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("embedding_model", sa.String(200), nullable=False, server_default="embed"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_bases")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_knowledge_bases_org_id_name")),
        schema="rag",
    )
    op.create_index(
        op.f("ix_rag_knowledge_bases_org_id"), "knowledge_bases", ["org_id"], schema="rag"
    )
