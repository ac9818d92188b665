"""HTTP routes of OpenAI's Responses API: ``/v1/responses`` (OpenAI's error shape)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from services.llm.chat.router import (
    CallOptionsDep,
    ChatServiceDep,
    OpenAIRoute,
    UsePrincipal,
    render,
)
from services.llm.responses.schemas import ResponsesRequest
from services.llm.responses.service import ResponsesService
from services.llm.state import LlmState

PREFIX = "/v1/responses"


async def get_responses_service(request: Request, chat: ChatServiceDep) -> ResponsesService:
    """Responses over the process's chat service (and rag's search for file_search)."""
    state = LlmState.of(request)
    return ResponsesService(chat, state.rag_search, state.settings)


ResponsesServiceDep = Annotated[ResponsesService, Depends(get_responses_service)]

router = APIRouter(tags=["llm"], route_class=OpenAIRoute)


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.post(
    PREFIX,
    summary="Create a model response (OpenAI's Responses API; SSE when stream=true)",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def create_response(
    body: ResponsesRequest,
    principal: UsePrincipal,
    service: ResponsesServiceDep,
    options: CallOptionsDep,
) -> Response:
    return render(await service.create(principal, body, options))


@router.get(
    f"{PREFIX}/{{response_id}}",
    summary="Retrieve a stored response (one of your organization's, not expired)",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}},
)
async def get_response(
    response_id: str, principal: UsePrincipal, service: ResponsesServiceDep
) -> Response:
    return _json(await service.get(principal, response_id))


@router.delete(
    f"{PREFIX}/{{response_id}}",
    summary="Delete a stored response",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}},
)
async def delete_response(
    response_id: str, principal: UsePrincipal, service: ResponsesServiceDep
) -> Response:
    return _json(await service.delete(principal, response_id))


@router.get(
    f"{PREFIX}/{{response_id}}/input_items",
    summary="List the input items of a stored response (this turn's, as sent)",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}},
)
async def list_input_items(
    response_id: str,
    principal: UsePrincipal,
    service: ResponsesServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    page = await service.input_items(principal, response_id, limit=limit, order=order, after=after)
    return _json(page)
