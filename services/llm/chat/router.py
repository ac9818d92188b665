"""HTTP routes of chat: OpenAI's ``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/models``,
and what every OpenAI route of the llm shares: OpenAI's error shape for an invalid body
(:class:`OpenAIRoute`), the option headers, the answer as JSON or SSE (:func:`render`).

``POST /v1/chat/completions`` is declared here for the OpenAPI document; requests to it are
served by the hot route (:mod:`.hot_route`), which must answer as this declaration would.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from libs.errors import BadRequest
from libs.identity import Principal, require_scope
from libs.permissions import Scope
from libs.sse import SSEResponse
from services.llm.chat.schemas import (
    ChatCompletionRequest,
    EmbeddingRequest,
    ModelList,
    ModelObject,
)
from services.llm.chat.service import CallOptions, ChatService, Result
from services.llm.state import LlmState

# paths whose errors are in OpenAI's shape (with the Responses API's prefix: see app.py)
OPENAI_PREFIXES = ("/v1/chat", "/v1/completions", "/v1/embeddings", "/v1/models")
CHAT_ROUTE = "/v1/chat/completions"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def openai_handler(handler: Handler) -> Handler:
    """``handler`` answering an invalid body as OpenAI does: 400 ``invalid_request_error``."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestValidationError as exc:
            details = [
                {
                    "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                    "message": err.get("msg", ""),
                    "type": err.get("type", ""),
                }
                for err in exc.errors()
            ]
            if any(d["type"] == "json_invalid" for d in details):
                # no param, as OpenAI (the error's location is a character offset, not a field)
                raise BadRequest(
                    "We could not parse the JSON body of your request.",
                    code="malformed_json",
                    details=[{k: v for k, v in d.items() if k != "field"} for d in details],
                ) from exc
            first = details[0] if details else {"field": "", "message": "invalid"}
            raise BadRequest(
                f"Invalid request: {first['field']}: {first['message']}",
                code="invalid_request",
                details=details,
            ) from exc

    return route


class OpenAIRoute(APIRoute):
    """OpenAI answers an invalid body with 400 ``invalid_request_error`` (not 422)."""

    def get_route_handler(self) -> Handler:
        return openai_handler(super().get_route_handler())


# dependencies are async: FastAPI runs plain ``def`` ones in a worker thread per request
async def get_chat_service(request: Request) -> ChatService:
    """The process's chat service (built by the app's lifespan)."""
    return LlmState.of(request).llm


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
UsePrincipal = Annotated[Principal, require_scope(Scope.LLM_USE)]


async def get_call_options(
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    x_aistack_cache: Annotated[
        str | None, Header(description="true/false: opt in or out of the response cache")
    ] = None,
    x_aistack_timeout: Annotated[
        str | None, Header(description="Per-request timeout in seconds (capped)")
    ] = None,
) -> CallOptions:
    return CallOptions(
        idempotency_key=idempotency_key,
        cache=x_aistack_cache,
        timeout=x_aistack_timeout,
        batch=request.headers.get("x-aistack-batch"),
    )


CallOptionsDep = Annotated[CallOptions, Depends(get_call_options)]


def render(result: Result) -> Response:
    """A call's result as the HTTP answer: JSON, or an SSE stream."""
    if result.stream is not None:
        return SSEResponse(result.stream, headers=result.headers)
    return Response(
        orjson.dumps(result.body), media_type="application/json", headers=result.headers
    )


router = APIRouter(tags=["llm"], route_class=OpenAIRoute)


@router.post(
    CHAT_ROUTE,
    summary="Create a chat completion (OpenAI-compatible; SSE when stream=true)",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    principal: UsePrincipal,
    service: ChatServiceDep,
    options: CallOptionsDep,
) -> Response:
    # served by the hot route (chat/hot_route.py); this declaration gives the OpenAPI document
    # and answers as the hot route does where it does not run (see tests/llm/chat)
    return render(await service.chat(principal, body, options))


@router.post(
    "/v1/embeddings",
    summary="Create embeddings (OpenAI-compatible)",
    response_model=None,
)
async def embeddings(
    body: EmbeddingRequest,
    principal: UsePrincipal,
    service: ChatServiceDep,
    options: CallOptionsDep,
) -> Response:
    return render(await service.embed(principal, body, options))


@router.get("/v1/models", summary="List model aliases", response_model=ModelList)
async def list_models(principal: UsePrincipal, service: ChatServiceDep) -> ModelList:
    return service.list_models()


@router.get("/v1/models/{model_id:path}", summary="Get one model alias", response_model=ModelObject)
async def get_model(model_id: str, principal: UsePrincipal, service: ChatServiceDep) -> ModelObject:
    return service.get_model(model_id)
