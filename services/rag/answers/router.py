"""``POST /v1/vector_stores/{id}/answer``: aistack's cited answers, JSON or server-sent events.

The stream's events: ``retrieval`` (the numbered citations) first, then ``delta`` events with
the answer's text (its ``[n]`` markers name citations), then ``done`` (the whole answer, the
markers used, usage); a failure after the stream started is an ``error`` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from libs.db import SessionDep
from libs.errors import AppError
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.sse import SSEResponse, event_frame
from services.rag.answers.schemas import AnswerObject, AnswerRequest
from services.rag.answers.service import AnswerService, citations, cited, nothing_found, prompt
from services.rag.search.service import SearchService
from services.rag.state import RagState

router = APIRouter(prefix="/v1/vector_stores", tags=["vector stores"])


async def get_answer_service(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> AnswerService:
    state = RagState.of(request)
    search = SearchService(session, principal, state.embedder)
    return AnswerService(search, state.http, state.settings, principal)


AnswerServiceDep = Annotated[AnswerService, Depends(get_answer_service)]


@router.post(
    "/{vector_store_id}/answer",
    response_model=AnswerObject,
    summary="Answer a question from a vector store, citing its sources (aistack)",
    description=__doc__,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
    dependencies=[require_scope(Scope.RAG_READ)],
)
async def answer(vector_store_id: str, body: AnswerRequest, service: AnswerServiceDep) -> Any:
    hits = await service.retrieve(
        vector_store_id, body.query, body.max_num_results, body.mode, body.filters
    )
    sources = citations(hits)
    model = body.model or service.settings.answer_model
    opts = {"max_tokens": body.max_tokens, "temperature": body.temperature}
    usage: dict[str, int] = {}
    if not body.stream:
        if not hits:
            return _result(None, nothing_found(body.query), False, sources, usage)
        text = "".join(
            [t async for t in service.tokens(model, prompt(body.query, hits), opts, usage)]
        )
        return _result(model, text, True, sources, usage)

    async def events() -> AsyncIterator[bytes]:
        yield event_frame(
            "retrieval", {"object": "vector_store.answer.retrieval", "citations": sources}
        )
        if not hits:
            text = nothing_found(body.query)
            yield event_frame("delta", {"text": text})
            yield event_frame(
                "done", _result(None, text, False, sources, usage, with_citations=False)
            )
            return
        parts: list[str] = []
        try:
            async for piece in service.tokens(model, prompt(body.query, hits), opts, usage):
                parts.append(piece)
                yield event_frame("delta", {"text": piece})
        except AppError as exc:
            yield event_frame("error", {"error": {"code": exc.code, "message": exc.message}})
            return
        yield event_frame(
            "done", _result(model, "".join(parts), True, sources, usage, with_citations=False)
        )

    return SSEResponse(events())


def _result(
    model: str | None,
    text: str,
    found: bool,
    sources: list[dict[str, Any]],
    usage: dict[str, int],
    *,
    with_citations: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "object": "vector_store.answer",
        "model": model,
        "answer": text,
        "found": found,
        "cited": cited(text, len(sources)),
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
        },
    }
    if with_citations:
        out["citations"] = sources
    return out
