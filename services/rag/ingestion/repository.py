"""Ingestion's queries: the lease on a store file, chunks written and embedded in bulk, the
generation swap."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.rag.models import Chunk, VectorStore, VectorStoreFile, hnsw_index

_INSERT = text(
    """
    INSERT INTO rag.chunks
        (vector_store_id, file_id, generation, seq, text, headings, tokens, tsv, visible)
    SELECT :vs, :f, :g, u.seq, u.body, u.headings, u.tokens, CAST(u.lex AS tsvector), false
    FROM unnest(CAST(:seqs AS int[]), CAST(:bodies AS text[]), CAST(:headings AS text[]),
                CAST(:tokens AS int[]), CAST(:lexes AS text[]))
         AS u(seq, body, headings, tokens, lex)
    """
)
_EMBED = text(
    """
    UPDATE rag.chunks AS c SET embedding = CAST(u.e AS vector), dims = :d
    FROM unnest(CAST(:ids AS bigint[]), CAST(:es AS text[])) AS u(id, e)
    WHERE c.id = u.id
    """
)


class IngestionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock(self, store_id: uuid.UUID, file_id: uuid.UUID) -> VectorStoreFile | None:
        stmt = (
            select(VectorStoreFile)
            .where(VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id == file_id)
            .with_for_update()
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def store(self, store_id: uuid.UUID) -> VectorStore | None:
        return await self.session.get(VectorStore, store_id)

    async def write_chunks(
        self, sf: VectorStoreFile, generation: int, rows: list[dict[str, Any]]
    ) -> None:
        """Every chunk of a generation in one statement (after removing any earlier attempt's)."""
        await self.session.execute(
            delete(Chunk).where(
                Chunk.vector_store_id == sf.vector_store_id,
                Chunk.file_id == sf.file_id,
                Chunk.generation == generation,
            )
        )
        await self.session.execute(
            _INSERT,
            {
                "vs": sf.vector_store_id,
                "f": sf.file_id,
                "g": generation,
                "seqs": [r["seq"] for r in rows],
                "bodies": [r["text"] for r in rows],
                "headings": [r["headings"] for r in rows],
                "tokens": [r["tokens"] for r in rows],
                "lexes": [r["tsv"] for r in rows],
            },
        )

    async def unembedded(
        self, sf: VectorStoreFile, generation: int, limit: int
    ) -> list[tuple[int, str, str]]:
        stmt = (
            select(Chunk.id, Chunk.headings, Chunk.text)
            .where(
                Chunk.vector_store_id == sf.vector_store_id,
                Chunk.file_id == sf.file_id,
                Chunk.generation == generation,
                Chunk.embedding.is_(None),
            )
            .order_by(Chunk.seq)
            .limit(limit)
        )
        return [(i, h, t) for i, h, t in (await self.session.execute(stmt)).all()]

    async def write_embeddings(self, ids: list[int], vectors: list[list[float]]) -> None:
        dims = len(vectors[0])
        await self.session.execute(
            _EMBED,
            {
                "ids": ids,
                "es": ["[" + ",".join(f"{x:.7g}" for x in v) + "]" for v in vectors],
                "d": dims,
            },
        )

    async def usage_bytes(self, sf: VectorStoreFile, generation: int) -> int:
        stmt = select(
            func.coalesce(
                func.sum(func.octet_length(Chunk.text) + func.coalesce(Chunk.dims, 0) * 4), 0
            )
        ).where(
            Chunk.vector_store_id == sf.vector_store_id,
            Chunk.file_id == sf.file_id,
            Chunk.generation == generation,
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def swap_generation(self, sf: VectorStoreFile, keep: int) -> None:
        """Searches see ``keep``'s chunks and no other generation's (gone), at once."""
        await self.session.execute(
            delete(Chunk).where(
                Chunk.vector_store_id == sf.vector_store_id,
                Chunk.file_id == sf.file_id,
                Chunk.generation != keep,
            )
        )
        await self.session.execute(
            update(Chunk)
            .where(
                Chunk.vector_store_id == sf.vector_store_id,
                Chunk.file_id == sf.file_id,
                Chunk.generation == keep,
            )
            .values(visible=True)
        )

    async def drop_generation(self, sf: VectorStoreFile, generation: int) -> None:
        await self.session.execute(
            delete(Chunk).where(
                Chunk.vector_store_id == sf.vector_store_id,
                Chunk.file_id == sf.file_id,
                Chunk.generation == generation,
            )
        )

    async def ensure_index(self, dims: int) -> None:
        """The HNSW index of a dimension no migration made (a model of another size)."""
        index = hnsw_index(dims)
        exists = await self.session.execute(
            text("SELECT to_regclass(:name)"), {"name": f"rag.{index.name}"}
        )
        if exists.scalar_one() is None:
            kind = "vector" if dims <= 2000 else "halfvec"
            await self.session.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {index.name} ON rag.chunks USING hnsw "
                    f"((embedding::{kind}({dims})) {kind}_cosine_ops) WHERE dims = {dims}"
                )
            )

    async def stalled(self, now: datetime, limit: int) -> list[VectorStoreFile]:
        """Files in progress that no live job holds: a lease that lapsed (its worker died) or
        none taken yet (queued, or its job lost: the caller asks the queue)."""
        stmt = (
            select(VectorStoreFile)
            .where(
                VectorStoreFile.status == "in_progress",
                (VectorStoreFile.lease_until < now) | VectorStoreFile.lease_until.is_(None),
            )
            .order_by(VectorStoreFile.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list((await self.session.scalars(stmt)).all())

    async def renew(
        self, store_id: uuid.UUID, file_id: uuid.UUID, job_id: str, lease: timedelta
    ) -> bool:
        """Hold the file a lease longer; False when it is no longer this job's to work on."""
        result = await self.session.execute(
            update(VectorStoreFile)
            .where(
                VectorStoreFile.vector_store_id == store_id,
                VectorStoreFile.file_id == file_id,
                VectorStoreFile.job_id == job_id,
                VectorStoreFile.status == "in_progress",
            )
            .values(lease_until=func.now() + lease)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def touch(self, sf: VectorStoreFile) -> None:
        await self.session.execute(
            update(VectorStoreFile)
            .where(
                VectorStoreFile.vector_store_id == sf.vector_store_id,
                VectorStoreFile.file_id == sf.file_id,
            )
            .values(updated_at=func.now())
        )
