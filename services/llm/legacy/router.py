"""HTTP route of OpenAI's legacy Completions API: ``POST /v1/completions`` (OpenAI's error
shape)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import Response

from services.llm.chat.router import (
    CallOptionsDep,
    ChatServiceDep,
    OpenAIRoute,
    UsePrincipal,
    render,
)
from services.llm.legacy.schemas import CompletionRequest
from services.llm.legacy.service import CompletionService


async def get_completion_service(chat: ChatServiceDep) -> CompletionService:
    """Completions over the process's chat service."""
    return CompletionService(chat)


CompletionServiceDep = Annotated[CompletionService, Depends(get_completion_service)]

router = APIRouter(tags=["llm"], route_class=OpenAIRoute)


@router.post(
    "/v1/completions",
    summary="Create a text completion (OpenAI's legacy Completions API, over chat; SSE when "
    "stream=true)",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def completions(
    body: CompletionRequest,
    principal: UsePrincipal,
    service: CompletionServiceDep,
    options: CallOptionsDep,
) -> Response:
    return render(await service.create(principal, body, options))
