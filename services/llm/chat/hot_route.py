"""The chat fast path: ``POST /v1/chat/completions`` served past FastAPI, for its speed.

Why: it is the llm's busiest route. The app's hot route (``libs.app.App.set_hot_route``) sends
it from the app's own middleware straight to :class:`ChatEndpoint`, skipping FastAPI's entry,
ServerErrorMiddleware, its exception and body-limit wrappers and the router (6-8 % of the
process's CPU in py-spy, docs/benchmarks.md, third round); and :func:`serve_chat` replaces
FastAPI's per-request dependency solving, ~40 % of the route's time (in-process 290 -> 173 us
a request; 16 concurrent chats ~850 -> 1,051 a second, llm CPU 0.95 -> 0.73 ms a request;
commit 4130259).

Keeping it in step: the route stays declared in :mod:`.router` (``chat_completions``), which
gives the OpenAPI document. :func:`serve_chat` must do what FastAPI does with that declaration,
in FastAPI's order: read and parse the body (JSON only when declared so), check the caller
(:data:`~services.llm.chat.router.UsePrincipal`), validate the body, read the option headers
(:func:`~services.llm.chat.router.get_call_options`), take the service
(:func:`~services.llm.chat.router.get_chat_service`), call it and :func:`render` the result,
with the same errors. A parameter added to the declaration must be read here too;
tests/llm/chat/test_hot_route.py sends the same requests through both and compares them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from libs.errors import AppError, app_error_response, error_response, http_exception_response
from libs.identity import INTERNAL_HEADER, get_principal
from libs.permissions import Scope as Permission
from libs.storage_errors import storage_error_response
from services.llm.chat.router import CHAT_ROUTE, get_chat_service, openai_handler, render
from services.llm.chat.schemas import ChatCompletionRequest
from services.llm.chat.service import CallOptions

log = logging.getLogger("aistack.llm")

_MISSING = object()
_LLM_USE = Permission.LLM_USE  # looked up once: an enum member's lookup costs ~0.2 us here


def is_chat_completion(scope: Scope) -> bool:
    """What the hot route claims: ``POST /v1/chat/completions``."""
    return scope["path"] == CHAT_ROUTE and scope["method"] == "POST"


async def serve_chat(request: Request) -> Response:
    """``chat_completions`` without FastAPI's dependency machinery, in FastAPI's order: the body
    is read and parsed, then the caller is checked, then the body is validated."""
    raw = await request.body()
    data: Any = _MISSING
    if raw:
        ctype = request.headers.get("content-type")
        # as FastAPI (strict content type): JSON only when declared; else bytes, which fail
        data = _loads(raw) if ctype and _is_json(ctype) else raw
    principal = await get_principal(request, request.headers.get(INTERNAL_HEADER))
    principal.require_scope(_LLM_USE)
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
        batch=headers.get("x-aistack-batch"),
    )
    service = await get_chat_service(request)
    return render(await service.chat(principal, body, options))


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
    except (UnicodeDecodeError, RecursionError) as exc:
        # not UTF-8, or nested past the parser's depth: FastAPI's answer (a 400), not a 500
        raise StarletteHTTPException(400, "There was an error parsing the body") from exc
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


class ChatEndpoint:
    """ASGI: ``POST /v1/chat/completions`` served by :func:`serve_chat`, without the router (the
    app's hot route, see ``libs.app.App``). Errors are rendered as the app's handlers render
    them on this route: OpenAI's shape.
    """

    def __init__(self) -> None:
        self.handler = openai_handler(serve_chat)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            # PostgreSQL/Redis down: 503; a refused value: 422
            outage = storage_error_response(scope, exc)
            if outage is not None:
                response = outage
            else:
                log.error("unhandled exception on POST %s", scope["path"], exc_info=exc)
                response = error_response(
                    500, "internal_error", "Internal server error", openai=True
                )
        await response(scope, receive, send)
