"""Search routes: OpenAI's ``/v1/vector_stores/{id}/search``, aistack's search over several
stores (``/v1/vector_stores/search``) and the internal route the llm's ``file_search`` uses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.rag.search.schemas import MultiSearchRequest, SearchRequest, SearchResultsPage
from services.rag.search.service import SearchService, statements_autocommit
from services.rag.state import RagState

router = APIRouter(prefix="/v1/vector_stores", tags=["vector stores"])
internal_router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
READ = [require_scope(Scope.RAG_READ)]


async def get_search_service(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> SearchService:
    state = RagState.of(request)
    await statements_autocommit(session)
    return SearchService(session, principal, state.embedder)


SearchServiceDep = Annotated[SearchService, Depends(get_search_service)]


@router.post(
    "/search",
    response_model=SearchResultsPage,
    summary="Search several vector stores at once (aistack)",
    description="The body of a store's search plus `vector_store_ids` (up to 20 of your "
    "stores); results from every store, ranked together, each naming its store.",
    dependencies=READ,
)
async def search_many(body: MultiSearchRequest, service: SearchServiceDep) -> object:
    stores = await service.stores(body.vector_store_ids)
    return service.page(body, await service.search(stores, body))


@router.post(
    "/{vector_store_id}/search",
    response_model=SearchResultsPage,
    summary="Search a vector store",
    description="OpenAI's search (query, max_num_results, filters, ranking_options, "
    "rewrite_query) plus aistack's `mode` (hybrid by default, vector or fulltext) and the "
    "hybrid weights `vector_weight` and `fulltext_weight`.",
    dependencies=READ,
)
async def search_store(
    vector_store_id: str, body: SearchRequest, service: SearchServiceDep
) -> object:
    stores = await service.stores([vector_store_id])
    return service.page(body, await service.search(stores, body))


@internal_router.post("/search", response_model=SearchResultsPage)
async def internal_search(body: MultiSearchRequest, service: SearchServiceDep) -> object:
    """For the llm's file_search tool: the principal it forwards names the organization."""
    stores = await service.stores(body.vector_store_ids)
    return service.page(body, await service.search(stores, body))
