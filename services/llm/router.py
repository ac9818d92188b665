"""HTTP routes of the llm service: OpenAI's ``/v1/chat/completions``, ``/v1/completions``
(:mod:`services.llm.completions`), ``/v1/embeddings``,
``/v1/models``. Errors on them use OpenAI's error shape (see ``OPENAI_PREFIXES``)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from libs.errors import (
    AppError,
    BadRequest,
    app_error_response,
    error_response,
    http_exception_response,
)
from libs.identity import Principal, get_principal, require_scope
from libs.permissions import Scope
from libs.sse import SSEResponse
from libs.storage_errors import storage_error_response
from services.llm.completions import CompletionRequest, create_completion
from services.llm.schemas import ChatCompletionRequest, EmbeddingRequest, ModelList, ModelObject
from services.llm.service import CallOptions, LlmService, Result

OPENAI_PREFIXES = ("/v1/chat", "/v1/completions", "/v1/embeddings", "/v1/models")

log = logging.getLogger("aistack.llm")


Handler = Callable[[Request], Coroutine[Any, Any, Response]]
F = TypeVar("F", bound=Callable[..., Any])
_FAST: dict[Callable[..., Any], Handler] = {}


def _fast(handler: Handler) -> Callable[[F], F]:
    """Serve an endpoint with ``handler`` (same semantics, no dependency solving)."""

    def register(endpoint: F) -> F:
        _FAST[endpoint] = handler
        return endpoint

    return register


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

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # a hand-written handler where FastAPI's per-request dependency solving was the
        # largest cost of the call; the endpoint's signature still makes the OpenAPI document
        return openai_handler(_FAST.get(self.endpoint) or super().get_route_handler())


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
        stream: AsyncIterator[bytes] = result.stream
        return SSEResponse(stream, headers=result.headers)
    return Response(
        orjson.dumps(result.body), media_type="application/json", headers=result.headers
    )


async def _chat_completions_fast(request: Request) -> Response:
    """``chat_completions`` without FastAPI's dependency machinery, in FastAPI's order: the body
    is read and parsed, then the caller is checked, then the body is validated."""
    raw = await request.body()
    data: Any = _MISSING
    if raw:
        ctype = request.headers.get("content-type")
        # as FastAPI (strict content type): JSON only when declared; else bytes, which fail
        data = _loads(raw) if ctype and _is_json(ctype) else raw
    principal = await get_principal(request)
    principal.require_scope(Scope.LLM_USE.value)
    if data is _MISSING:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        body = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc
    headers = request.headers
    options = CallOptions(
        idempotency_key=headers.get("idempotency-key"),
        cache=headers.get("x-aistack-cache"),
        timeout=headers.get("x-aistack-timeout"),
    )
    service: LlmService = request.app.state.llm
    return _render(await service.chat(principal, body, options))


_MISSING = object()


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # what orjson refuses and json accepts (NaN, Infinity) still parses, as in FastAPI
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from exc


@router.post(
    "/v1/chat/completions",
    summary="Create a chat completion (OpenAI-compatible; SSE when stream=true)",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
@_fast(_chat_completions_fast)
async def chat_completions(
    body: ChatCompletionRequest,
    principal: UsePrincipal,
    service: ServiceDep,
    options: OptionsDep,
) -> Response:
    return _render(await service.chat(principal, body, options))


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
    service: ServiceDep,
    options: OptionsDep,
) -> Response:
    return _render(await create_completion(service, principal, body, options))


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


CHAT_ROUTE = "/v1/chat/completions"


def is_chat_completion(scope: AsgiScope) -> bool:
    """The hot route of the llm app: ``POST /v1/chat/completions``."""
    return scope["path"] == CHAT_ROUTE and scope["method"] == "POST"


class ChatEndpoint:
    """ASGI: ``POST /v1/chat/completions`` served by its handler, without the router (the
    app's hot route, see ``libs.app.App``). Errors are rendered as the app's handlers render
    them on this route: OpenAI's shape.
    """

    def __init__(self) -> None:
        self.handler = openai_handler(_chat_completions_fast)

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        # the route label of the request metrics (no router ran to set scope["route"])
        scope["aistack.route"] = CHAT_ROUTE
        request = Request(scope, receive)  # scope["app"] is the app (set by App)
        try:
            response = await self.handler(request)
        except AppError as exc:
            response = app_error_response(exc, openai=True)
        except ClientDisconnect:
            return  # nobody to answer
        except StarletteHTTPException as exc:
            # the body grew past the app's limit while being read (BodyLimitMiddleware)
            response = http_exception_response(exc, openai=True)
        except Exception as exc:
            outage = storage_error_response(
                scope, exc
            )  # PostgreSQL/Redis down: 503; a refused value: 422
            if outage is not None:
                response = outage
            else:
                log.error("unhandled exception on POST %s", scope["path"], exc_info=exc)
                response = error_response(
                    500, "internal_error", "Internal server error", openai=True
                )
        await response(scope, receive, send)
