"""Search in SQL: vector (pgvector HNSW), full text (GIN) and their fusion by reciprocal rank,
one statement, one round trip.

Each ranking keeps its best ``candidates``; hybrid sums ``weight / (60 + rank)`` over the two
(reciprocal-rank fusion: no score scales to reconcile, a chunk found by both rises) and reports
it over its largest possible value, so scores stay within [0, 1]. Vector scores are cosine
similarities, full-text scores ``ts_rank`` normalised to [0, 1) (``rank / (rank + 1)``).
Stores embedded with different models (dimensions) are searched in one statement too: a vector
ranking per model, merged by similarity.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

RRF_K = 60


@dataclass
class VectorGroup:
    """Stores sharing an embedding model: the query's vector for them."""

    dims: int
    store_ids: list[uuid.UUID]
    vector: list[float]


@dataclass
class StoreRef:
    """What a search needs of a vector store (read without the ORM: a search's hot path)."""

    id: uuid.UUID
    embedding_model: str
    embedding_dims: int | None
    expires_at: datetime | None
    last_active_at: datetime | None
    expires_after_days: int | None


_STORES = text(
    "SELECT id, embedding_model, embedding_dims, expires_at, last_active_at, "
    "expires_after_days FROM rag.vector_stores WHERE id = ANY(:ids) AND org_id = :org"
)


@dataclass
class Hit:
    chunk_id: int
    vector_store_id: uuid.UUID
    file_id: uuid.UUID
    text: str
    filename: str
    attributes: dict[str, Any] | None
    score: float
    # what each ranking said of it (None: not among that ranking's candidates)
    similarity: float | None = None
    keyword_rank: float | None = None


class SearchRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def stores(self, org_id: uuid.UUID, keys: list[uuid.UUID]) -> list[StoreRef]:
        """The organization's stores among ``keys``."""
        rows = await self.session.execute(_STORES, {"ids": keys, "org": org_id})
        return [StoreRef(*r) for r in rows]

    async def search(
        self,
        *,
        mode: str,
        store_ids: list[uuid.UUID],
        groups: list[VectorGroup],
        tsquery: str | None,
        limit: int,
        filter_sql: str | None,
        filter_params: dict[str, Any],
        vector_weight: float,
        fulltext_weight: float,
    ) -> list[Hit]:
        candidates = max(limit * 2, 40) if mode == "hybrid" else limit
        # the limits are written into the SQL (ints of ours), not bound: with a bound LIMIT a
        # cached generic plan may not know it is small and scan every chunk instead of the
        # HNSW index (seen at 100,000 chunks: 20-30 ms a search instead of 2)
        n, k = int(candidates), int(limit)
        params: dict[str, Any] = dict(filter_params)
        where_filter = (
            "AND EXISTS (SELECT 1 FROM rag.vector_store_files sf WHERE sf.vector_store_id = "
            f"c.vector_store_id AND sf.file_id = c.file_id AND {filter_sql})"
            if filter_sql
            else ""
        )
        ctes: list[str] = []
        use_vec = mode in ("vector", "hybrid") and bool(groups)
        use_fts = mode in ("fulltext", "hybrid") and tsquery is not None
        if not use_vec and not use_fts:
            return []
        if use_vec:
            parts = []
            for g, group in enumerate(groups):
                d = int(group.dims)
                kind = "vector" if d <= 2000 else "halfvec"
                # bound as real[] (sent in binary) and cast by pgvector: writing 384 floats
                # as a text literal cost more CPU than the rest of the statement's building
                params[f"q{g}"] = group.vector
                params[f"s{g}"] = group.store_ids
                dist = f"(c.embedding::{kind}({d}) <=> CAST(CAST(:q{g} AS real[]) AS {kind}({d})))"
                parts.append(
                    f"(SELECT c.id, 1 - {dist} AS sim FROM rag.chunks c "
                    f"WHERE c.dims = {d} AND c.visible AND c.vector_store_id = ANY(:s{g}) "
                    f"{where_filter} ORDER BY {dist} LIMIT {n})"
                )
            ctes.append(
                "vec AS (SELECT id, sim, row_number() OVER (ORDER BY sim DESC, id) AS r "
                f"FROM ({' UNION ALL '.join(parts)}) AS v ORDER BY sim DESC LIMIT {n})"
            )
        if use_fts:
            params["tsq"] = tsquery
            params["stores"] = store_ids
            ctes.append(
                "fts AS (SELECT c.id, ts_rank(c.tsv, q.q, 32) AS rank, "
                "row_number() OVER (ORDER BY ts_rank(c.tsv, q.q, 32) DESC, c.id) AS r "
                "FROM rag.chunks c, (SELECT CAST(:tsq AS tsquery) AS q) AS q "
                f"WHERE c.tsv @@ q.q AND c.visible AND c.vector_store_id = ANY(:stores) "
                f"{where_filter} ORDER BY rank DESC, c.id LIMIT {n})"
            )
        if mode == "vector":
            ranked = "SELECT id, sim AS score, sim, CAST(NULL AS float8) AS rank FROM vec"
        elif mode == "fulltext":
            ranked = "SELECT id, rank AS score, CAST(NULL AS float8) AS sim, rank FROM fts"
        else:
            wv = vector_weight if use_vec else 0.0
            wf = fulltext_weight if use_fts else 0.0
            params["wv"], params["wf"] = wv, wf
            params["top"] = (wv + wf) / (RRF_K + 1)
            arms = []
            if use_vec:
                arms.append(
                    f"SELECT id, CAST(:wv AS float8) / ({RRF_K} + r) AS s, sim, "
                    "CAST(NULL AS float8) AS rank FROM vec"
                )
            if use_fts:
                arms.append(
                    f"SELECT id, CAST(:wf AS float8) / ({RRF_K} + r) AS s, "
                    "CAST(NULL AS float8) AS sim, rank FROM fts"
                )
            ranked = (
                f"SELECT id, sum(s) / CAST(:top AS float8) AS score, max(sim) AS sim, "
                f"max(rank) AS rank FROM ({' UNION ALL '.join(arms)}) AS u GROUP BY id"
            )
        sql = (
            f"WITH {', '.join(ctes)}, ranked AS ({ranked}) "
            "SELECT c.id, c.vector_store_id, c.file_id, c.text, f.filename, sf.attributes, "
            "ranked.score, ranked.sim, ranked.rank FROM ranked "
            "JOIN rag.chunks c ON c.id = ranked.id "
            "JOIN rag.files f ON f.id = c.file_id "
            "JOIN rag.vector_store_files sf "
            "ON sf.vector_store_id = c.vector_store_id AND sf.file_id = c.file_id "
            f"ORDER BY ranked.score DESC, c.id LIMIT {k}"
        )
        rows = (await self.session.execute(text(sql), params)).all()
        return [
            Hit(
                chunk_id=r[0],
                vector_store_id=r[1],
                file_id=r[2],
                text=r[3],
                filename=r[4],
                attributes=r[5],
                score=max(0.0, min(1.0, float(r[6]))),
                similarity=None if r[7] is None else float(r[7]),
                keyword_rank=None if r[8] is None else float(r[8]),
            )
            for r in rows
        ]
