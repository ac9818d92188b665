"""Database models of the rag service (Postgres schema ``rag``).

Files (OpenAI's Files API) and vector stores (a knowledge base is a vector store), the files
attached to each store, file batches, and the chunks ingestion makes of each store file.

Embeddings live in one ``vector`` column without a fixed dimension (``dims`` says how many a
row has): each store records its embedding model, and the dimension follows the model. Each
dimension gets its own partial HNSW index over ``embedding::vector(d)`` (migrations; new
dimensions on first use, :mod:`services.rag.ingestion.indexes`), so stores of different models
share the table and every search uses the index of its own dimension.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.orm import TYPE_ANNOTATION_MAP, IdMixin, TimestampMixin, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("rag")
    type_annotation_map = TYPE_ANNOTATION_MAP


class File(IdMixin, TimestampMixin, Base):
    """An uploaded file: its bytes live in storage under ``storage_key``."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_org_created", "org_id", "created_at", "id"),)

    org_id: Mapped[uuid.UUID] = mapped_column(index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(200), default="application/octet-stream")
    storage_key: Mapped[str] = mapped_column(String(600))
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)


class StorageDeletion(Base):
    """Bytes owed a delete, so a file's bytes and row go together: written with the row's
    delete (done after commit, retried by the worker's purge until storage answers), and
    before an upload's bytes are written, deferred by a day and taken back in the transaction
    that records the file (an upload whose request died leaves no bytes for long)."""

    __tablename__ = "storage_deletions"

    storage_key: Mapped[str] = mapped_column(String(600), primary_key=True)
    not_before: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)


class VectorStore(IdMixin, TimestampMixin, Base):
    """A knowledge base: files chunked, embedded with one model and searched together."""

    __tablename__ = "vector_stores"
    __table_args__ = (Index("ix_vector_stores_org_created", "org_id", "created_at", "id"),)

    org_id: Mapped[uuid.UUID] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    embedding_model: Mapped[str] = mapped_column(String(200))
    # known once the first embedding came back (the model decides)
    embedding_dims: Mapped[int | None] = mapped_column(Integer, default=None)
    expires_after_days: Mapped[int | None] = mapped_column(Integer, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    last_active_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)


class FileBatch(IdMixin, Base):
    """Files attached to a store together; their counts are the batch's progress."""

    __tablename__ = "file_batches"

    vector_store_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("vector_stores.id", ondelete="CASCADE"), index=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column()
    # in_progress, cancelling, cancelled, completed (OpenAI's; failed is never reached: a
    # failed file is the file's outcome, the batch still completes)
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class VectorStoreFile(TimestampMixin, Base):
    """A file attached to a store, and where its ingestion is.

    ``generation`` is the version of the file's chunks that searches see; ingestion builds
    ``pending_generation`` beside it and swaps in one transaction (replacing a file's content
    retires its old chunks atomically). ``stage``: ``queued`` → ``chunked`` (every chunk of
    the pending generation written, in one transaction) → ``embedded`` → done; a job that
    starts again resumes from the stage reached. ``lease_until``: the job working on it holds
    it until then and renews it per step; one whose worker died lets it lapse, and the
    reconciler gives the file to a new job.
    """

    __tablename__ = "vector_store_files"
    __table_args__ = (
        Index("ix_vector_store_files_store_status", "vector_store_id", "status"),
        Index("ix_vector_store_files_status_lease", "status", "lease_until"),
    )

    vector_store_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("vector_stores.id", ondelete="CASCADE"), primary_key=True
    )
    # OpenAI: deleting a file removes it from every store
    file_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    last_error_code: Mapped[str | None] = mapped_column(String(32), default=None)
    last_error_message: Mapped[str | None] = mapped_column(Text, default=None)
    # the resolved static strategy: {"max_chunk_size_tokens": n, "chunk_overlap_tokens": m}
    chunking: Mapped[dict[str, Any]] = mapped_column(JSONB)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("file_batches.id", ondelete="SET NULL"), default=None, index=True
    )
    generation: Mapped[int] = mapped_column(Integer, default=0)
    pending_generation: Mapped[int] = mapped_column(Integer, default=1)
    stage: Mapped[str] = mapped_column(String(16), default="queued")
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


# the dimensions the migrations index (all-MiniLM-L6-v2 and multilingual-e5-small: 384; 768;
# 1024; text-embedding-3-small: 1536)
INDEXED_DIMENSIONS = (384, 768, 1024, 1536)


def hnsw_index(dims: int) -> Index:
    """The HNSW index of one dimension: partial on ``dims``, over the column cast to it
    (pgvector indexes need a fixed dimension; halfvec past vector's 2000)."""
    kind = "vector" if dims <= 2000 else "halfvec"
    return Index(
        f"ix_chunks_hnsw_{dims}",
        text(f"(embedding::{kind}({dims})) {kind}_cosine_ops"),
        postgresql_using="hnsw",
        postgresql_where=text(f"dims = {dims}"),
    )


class Chunk(Base):
    """A piece of a store file's text, its embedding and its full-text lexemes."""

    __tablename__ = "chunks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["vector_store_id", "file_id"],
            ["vector_store_files.vector_store_id", "vector_store_files.file_id"],
            ondelete="CASCADE",
        ),
        UniqueConstraint("vector_store_id", "file_id", "generation", "seq"),
        Index("ix_chunks_tsv", "tsv", postgresql_using="gin"),
        # one HNSW index per dimension (more are made when a new dimension comes: ingestion)
        *(hnsw_index(d) for d in INDEXED_DIMENSIONS),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    vector_store_id: Mapped[uuid.UUID] = mapped_column()
    file_id: Mapped[uuid.UUID] = mapped_column()
    generation: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    # the heading path (" > " joined) the chunk starts under, "" without headings
    headings: Mapped[str] = mapped_column(Text, default="")
    tokens: Mapped[int] = mapped_column(Integer)
    # searches see a file's chunks once its generation is swapped in (ingestion's last step)
    visible: Mapped[bool] = mapped_column(Boolean, default=False)
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=True, default=None)
    dims: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    tsv: Mapped[Any] = mapped_column(TSVECTOR)
