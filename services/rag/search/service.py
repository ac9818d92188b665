"""Search over one or several of the organization's vector stores (also for the llm's
``file_search`` tool through ``/internal/search``)."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from libs.errors import BadRequest, ServiceUnavailable
from libs.identity import Principal
from services.rag.core import ids
from services.rag.core.clock import now
from services.rag.ingestion import segment
from services.rag.ingestion.embed import Embedder, EmbeddingError
from services.rag.metrics import SEARCH_SECONDS
from services.rag.models import VectorStore
from services.rag.search.filters import FilterSQL
from services.rag.search.repository import Hit, SearchRepository, StoreRef, VectorGroup
from services.rag.search.rewrite import rewrite
from services.rag.search.schemas import SearchRequest

# last_active_at is written at most this often per store (not on every search)
ACTIVE_EVERY = timedelta(seconds=60)


def render_hit(hit: Hit) -> dict[str, Any]:
    return {
        "file_id": ids.encode(ids.FILE, hit.file_id),
        "filename": hit.filename,
        "score": round(hit.score, 6),
        "attributes": hit.attributes or {},
        "content": [{"type": "text", "text": hit.text}],
        "vector_store_id": ids.encode(ids.VECTOR_STORE, hit.vector_store_id),
    }


async def statements_autocommit(session: AsyncSession) -> None:
    """A search reads in two statements (its stores, then the search) and writes at most
    ``last_active_at``: each runs on its own, without BEGIN and COMMIT round trips (about a
    tenth of rag's CPU per search). Not for a session inside an outer transaction (tests')."""
    if isinstance(session.bind, AsyncEngine):
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def search_queries(body: SearchRequest) -> list[str]:
    """The queries searched: as given, or rewritten for search (``rewrite_query``)."""
    queries = body.queries()
    return [rewrite(q) for q in queries] if body.rewrite_query else queries


class SearchService:
    def __init__(self, session: AsyncSession, principal: Principal, embedder: Embedder) -> None:
        self.session = session
        self.principal = principal
        self.org_id = principal.require_org()
        self.embedder = embedder
        self.repo = SearchRepository(session)

    async def stores(self, public_ids: list[str]) -> list[StoreRef]:
        """The organization's stores by public id (404 for any other), not expired."""
        keys = [ids.store_key(p) for p in public_ids]
        found = {s.id: s for s in await self.repo.stores(self.org_id, keys)}
        out = []
        for public_id, key in zip(public_ids, keys, strict=True):
            store = found.get(key)
            if store is None:
                raise ids.not_found("vector store", public_id, "vector_store_not_found")
            if store.expires_at is not None and store.expires_at <= now():
                raise BadRequest(
                    f"Vector store '{public_id}' has expired.", code="vector_store_expired"
                )
            if store not in out:
                out.append(store)
        return out

    async def search(self, stores: list[StoreRef], body: SearchRequest) -> list[Hit]:
        started = time.perf_counter()
        queries = search_queries(body)
        joined = "\n".join(queries)
        groups: list[VectorGroup] = []
        if body.mode in ("vector", "hybrid"):
            by_model: dict[tuple[str, int], list[uuid.UUID]] = defaultdict(list)
            for s in stores:
                if s.embedding_dims:  # a store with nothing embedded yet has no vectors
                    by_model[(s.embedding_model, s.embedding_dims)].append(s.id)
            for (model, dims), store_ids in by_model.items():
                try:
                    (vector,) = await self.embedder.embed(
                        [joined],
                        model=model,
                        input_type="query",
                        org_id=self.org_id,
                        user_id=self.principal.user_id,
                        retries=1,
                    )
                except EmbeddingError as exc:
                    if exc.refused:  # the store names a model the llm does not serve
                        raise BadRequest(
                            f"The query could not be embedded: {exc}", code="embedding_refused"
                        ) from exc
                    raise ServiceUnavailable(
                        f"The query could not be embedded: {exc}",
                        code="embedding_unavailable",
                        headers={"retry-after": "5"},
                    ) from exc
                groups.append(VectorGroup(dims, store_ids, vector))
        filter_sql, filter_params = None, {}
        if body.filters is not None:
            builder = FilterSQL("sf.attributes")
            filter_sql, filter_params = builder.build(body.filters), builder.params
        hits = await self.repo.search(
            mode=body.mode,
            store_ids=[s.id for s in stores],
            groups=groups,
            tsquery=segment.tsquery_literal(joined) if body.mode != "vector" else None,
            limit=body.max_num_results,
            filter_sql=filter_sql,
            filter_params=filter_params,
            vector_weight=body.vector_weight,
            fulltext_weight=body.fulltext_weight,
        )
        threshold = body.ranking_options.score_threshold if body.ranking_options else 0.0
        hits = [h for h in hits if h.score >= threshold]
        await self._touch(stores)
        SEARCH_SECONDS.labels(body.mode).observe(time.perf_counter() - started)
        return hits

    async def _touch(self, stores: list[StoreRef]) -> None:
        moment = now()
        for s in stores:
            if s.last_active_at is None or moment - s.last_active_at > ACTIVE_EVERY:
                values: dict[str, Any] = {"last_active_at": moment}
                if s.expires_after_days:
                    values["expires_at"] = moment + timedelta(days=s.expires_after_days)
                await self.session.execute(
                    update(VectorStore).where(VectorStore.id == s.id).values(**values)
                )

    def page(self, body: SearchRequest, hits: list[Hit]) -> dict[str, Any]:
        return {
            "object": "vector_store.search_results.page",
            "search_query": search_queries(body),
            "data": [render_hit(h) for h in hits],
            "has_more": False,
            "next_page": None,
        }
