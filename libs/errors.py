"""One error model: domain errors from one hierarchy, rendered in one JSON shape.

Every error body is ``{"error": {"code", "message", "request_id", "details"?}}``. Routes
that mimic OpenAI's API (declared per app with ``openai_error_prefixes``) render OpenAI's
shape instead so its SDKs raise the right exception types.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from libs.context import get_request_id

log = logging.getLogger("aistack.errors")


class AppError(Exception):
    """Base of every domain error; subclasses fix the status and the machine code."""

    status_code: int = 400
    code: str = "bad_request"
    message: str = "Bad request"
    headers: dict[str, str] | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.details = details
        if headers is not None:
            self.headers = headers
        if status_code is not None:
            self.status_code = status_code
        super().__init__(self.message)


class BadRequest(AppError):
    status_code, code, message = 400, "bad_request", "Bad request"


class MalformedBody(AppError):
    status_code, code, message = 400, "malformed_json", "Request body is not valid JSON"


class Unauthorized(AppError):
    status_code, code, message = 401, "unauthorized", "Authentication required"


class Forbidden(AppError):
    status_code, code, message = 403, "forbidden", "Not allowed"


class NotFound(AppError):
    status_code, code, message = 404, "not_found", "Not found"


class MethodNotAllowed(AppError):
    status_code, code, message = 405, "method_not_allowed", "Method not allowed"


class Conflict(AppError):
    status_code, code, message = 409, "conflict", "Conflict"


class Gone(AppError):
    status_code, code, message = 410, "gone", "Gone"


class PayloadTooLarge(AppError):
    status_code, code, message = 413, "payload_too_large", "Request body too large"


class ValidationFailed(AppError):
    status_code, code, message = 422, "validation_error", "Request validation failed"


class RateLimited(AppError):
    status_code, code, message = 429, "rate_limited", "Too many requests"


class InsufficientQuota(AppError):
    """A spend budget is used up (OpenAI's answer when an account's quota is: its SDKs raise
    RateLimitError with code ``insufficient_quota``, which callers already handle)."""

    status_code, code, message = 429, "insufficient_quota", "You exceeded your current quota"


class AccountFrozen(AppError):
    """A payment overdue past its grace period: LLM calls, embeddings and ingestion are refused
    until it is settled; reads, exports and billing pages keep working, nothing is deleted."""

    status_code, code = 402, "account_frozen"
    message = (
        "This organization's account is frozen: a payment is overdue past its grace period. "
        "Reads and billing pages keep working; settle the invoice to resume"
    )


class InternalError(AppError):
    status_code, code, message = 500, "internal_error", "Internal server error"


class BadGateway(AppError):
    status_code, code, message = 502, "bad_gateway", "Upstream service failed"


class ServiceUnavailable(AppError):
    status_code, code, message = 503, "service_unavailable", "Service unavailable"


class GatewayTimeout(AppError):
    status_code, code, message = 504, "gateway_timeout", "Upstream service timed out"


# OpenAI's ``error.type`` by status; OpenAI itself answers a 404 (unknown model, route or
# object) with ``invalid_request_error``, which its SDKs and clients match on
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_payload(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    *,
    openai: bool = False,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Build the JSON error body (aistack's shape, or OpenAI's)."""
    rid = request_id or get_request_id()
    if openai:
        param = None
        if isinstance(details, list) and details and isinstance(details[0], dict):
            param = details[0].get("field")
        return {
            "error": {
                "message": message,
                "type": "insufficient_quota"
                if code == "insufficient_quota"
                else _OPENAI_TYPES.get(
                    status, "api_error" if status >= 500 else "invalid_request_error"
                ),
                "param": param,
                "code": code,
                "request_id": rid,
            }
        }
    body: dict[str, Any] = {"code": code, "message": message, "request_id": rid}
    if details is not None:
        body["details"] = details
    return {"error": body}


def is_openai_path(path: str, prefixes: Sequence[str]) -> bool:
    """True when ``path`` belongs to an OpenAI-compatible route."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    *,
    headers: dict[str, str] | None = None,
    openai: bool = False,
) -> Response:
    """Render an error as a JSON response carrying the request id header."""
    rid = get_request_id()
    hdrs = dict(headers or {})
    if rid:
        hdrs.setdefault("x-request-id", rid)
    return Response(
        content=orjson.dumps(error_payload(status, code, message, details, openai=openai)),
        status_code=status,
        media_type="application/json",
        headers=hdrs,
    )


def app_error_response(exc: AppError, *, openai: bool = False) -> Response:
    """An :class:`AppError` rendered as its JSON response (for ASGI code past the handlers)."""
    return error_response(
        exc.status_code, exc.code, exc.message, exc.details, headers=exc.headers, openai=openai
    )


def wants_openai(scope: Mapping[str, Any]) -> bool:
    """True when the request of ASGI ``scope`` is on an OpenAI-compatible route of its app
    (for code that answers before or outside the app's handlers: middleware, hot routes)."""
    state = getattr(scope.get("app"), "state", None)
    prefixes: Sequence[str] = getattr(state, "openai_error_prefixes", ())
    return bool(prefixes) and is_openai_path(scope["path"], prefixes)


def _wants_openai(request: Request) -> bool:
    return wants_openai(request.scope)


# Starlette's own (routing) errors: our wording; the code for any other status
_HTTP_MESSAGES = {
    404: ("not_found", "No route matches this path"),
    405: ("method_not_allowed", "Method not allowed on this path"),
}
_HTTP_CODES = {413: "payload_too_large"}


def http_exception_response(exc: StarletteHTTPException, *, openai: bool = False) -> Response:
    """A Starlette ``HTTPException`` (no route, wrong method, body too large) as an error."""
    status = exc.status_code
    if status in _HTTP_MESSAGES:
        code, message = _HTTP_MESSAGES[status]
    else:
        code, message = _HTTP_CODES.get(status, "http_error"), str(exc.detail)
    return error_response(
        status,
        code,
        message,
        getattr(exc, "details", None),
        headers=getattr(exc, "headers", None),
        openai=openai,
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append(
            {"field": ".".join(loc), "message": err.get("msg", ""), "type": err.get("type", "")}
        )
    return details


def install_error_handlers(app: FastAPI) -> None:
    """Render every error kind in the one JSON shape."""

    async def app_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AppError)
        return app_error_response(exc, openai=_wants_openai(request))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = _validation_details(exc)
        if any(d["type"] == "json_invalid" for d in details):
            return error_response(
                400,
                "malformed_json",
                "Request body is not valid JSON",
                details,
                openai=_wants_openai(request),
            )
        return error_response(
            422,
            "validation_error",
            "Request validation failed",
            details,
            openai=_wants_openai(request),
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return http_exception_response(exc, openai=_wants_openai(request))

    async def unhandled(request: Request, exc: Exception) -> Response:
        log.error("unhandled exception on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(
            500, "internal_error", "Internal server error", openai=_wants_openai(request)
        )

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unhandled)
