"""HTTP routes of the llm service: OpenAI's ``/v1/chat/completions``, ``/v1/embeddings``,
``/v1/models``. Errors on them use OpenAI's error shape (see ``OPENAI_PREFIXES``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from libs.errors import BadRequest
from libs.identity import Principal, require_scope
from libs.permissions import Scope
from services.llm.schemas import ChatCompletionRequest, EmbeddingRequest, ModelList, ModelObject
from services.llm.service import CallOptions, LlmService, Result

OPENAI_PREFIXES = ("/v1/chat", "/v1/embeddings", "/v1/models")


class OpenAIRoute(APIRoute):
    """OpenAI answers an invalid body with 400 ``invalid_request_error`` (not 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

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
                    raise BadRequest(
                        "We could not parse the JSON body of your request.",
                        code="malformed_json",
                        details=details,
                    ) from exc
                first = details[0] if details else {"field": "", "message": "invalid"}
                raise BadRequest(
                    f"Invalid request: {first['field']}: {first['message']}",
                    code="invalid_request",
                    details=details,
                ) from exc

        return route


class SSEResponse(StreamingResponse):
    """An SSE stream that notices a client going away even while the upstream is silent, and
    always closes its body iterator, so a disconnect mid-stream cancels the upstream request.

    (Starlette's own StreamingResponse only learns of a disconnect from a failed write under
    ASGI 2.4, which never comes while the upstream is between chunks.)
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-write
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await aclose()


# dependencies are async: FastAPI runs plain ``def`` ones in a worker thread per request
async def get_service(request: Request) -> LlmService:
    service: LlmService = request.app.state.llm
    return service


ServiceDep = Annotated[LlmService, Depends(get_service)]
UsePrincipal = Annotated[Principal, require_scope(Scope.LLM_USE.value)]

router = APIRouter(tags=["llm"], route_class=OpenAIRoute)


async def _options(
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    x_aistack_cache: Annotated[
        str | None, Header(description="true/false: opt in or out of the response cache")
    ] = None,
    x_aistack_timeout: Annotated[
        str | None, Header(description="Per-request timeout in seconds (capped)")
    ] = None,
) -> CallOptions:
    return CallOptions(
        idempotency_key=idempotency_key, cache=x_aistack_cache, timeout=x_aistack_timeout
    )


OptionsDep = Annotated[CallOptions, Depends(_options)]


def _render(result: Result) -> Response:
    if result.stream is not None:
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **result.headers}
        stream: AsyncIterator[bytes] = result.stream
        return SSEResponse(stream, headers=headers)
    return Response(
        orjson.dumps(result.body), media_type="application/json", headers=result.headers
    )


@router.post(
    "/v1/chat/completions",
    summary="Create a chat completion (OpenAI-compatible; SSE when stream=true)",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    principal: UsePrincipal,
    service: ServiceDep,
    options: OptionsDep,
) -> Response:
    return _render(await service.chat(principal, body, options))


@router.post(
    "/v1/embeddings",
    summary="Create embeddings (OpenAI-compatible)",
    response_model=None,
)
async def embeddings(
    body: EmbeddingRequest,
    principal: UsePrincipal,
    service: ServiceDep,
    options: OptionsDep,
) -> Response:
    return _render(await service.embed(principal, body, options))


@router.get("/v1/models", summary="List model aliases", response_model=ModelList)
async def list_models(principal: UsePrincipal, service: ServiceDep) -> ModelList:
    return service.list_models()


@router.get("/v1/models/{model_id:path}", summary="Get one model alias", response_model=ModelObject)
async def get_model(model_id: str, principal: UsePrincipal, service: ServiceDep) -> ModelObject:
    return service.get_model(model_id)
