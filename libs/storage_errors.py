"""An outage of PostgreSQL or Redis reaches the client as a 503 in the error shape.

Without these handlers a refused connection is an unhandled exception: a 500
``internal_error`` and a traceback per request, which tells a client nothing it can act on.
With them the client gets ``503 service_unavailable`` with ``Retry-After`` and the
dependency that failed, and the log gets one warning line per request. Errors of a
different kind (a constraint violation, a bad query) still surface as 500s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from starlette.responses import Response

from libs.errors import error_response, is_openai_path

log = logging.getLogger("aistack.outages")

RETRY_AFTER_S = 2


def outage_of(exc: BaseException) -> str | None:
    """Which dependency ``exc`` says is unreachable ("database", "redis"), or None."""
    from redis import exceptions as redis_errors

    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return "redis"
    from sqlalchemy import exc as sa_errors

    if isinstance(exc, sa_errors.OperationalError | sa_errors.InterfaceError):
        return "database"
    if isinstance(exc, sa_errors.DBAPIError) and exc.connection_invalidated:
        return "database"
    if isinstance(exc, sa_errors.TimeoutError):  # the pool had no connection to give
        return "database"
    # asyncpg's connect raises the socket's own error (SQLAlchemy re-raises it unwrapped)
    if isinstance(exc, ConnectionError):
        return "database"
    return None


def outage_response(request: Request, dependency: str) -> Response:
    """The 503 a client sees while ``dependency`` is unreachable."""
    prefixes: Sequence[str] = getattr(request.app.state, "openai_error_prefixes", ())
    return error_response(
        503,
        "service_unavailable",
        f"The service's {dependency} is unavailable; retry shortly",
        {"dependency": dependency},
        headers={"Retry-After": str(RETRY_AFTER_S)},
        openai=bool(prefixes) and is_openai_path(request.url.path, prefixes),
    )


def install_outage_handlers(app: FastAPI) -> None:
    """Render database and Redis connection failures as 503 instead of 500."""
    from redis import exceptions as redis_errors
    from sqlalchemy import exc as sa_errors

    async def handler(request: Request, exc: Exception) -> Response:
        dependency = outage_of(exc)
        if dependency is None:
            raise exc  # not an outage: the generic 500 handling applies
        log.warning(
            "%s %s: %s unavailable (%s: %s)",
            request.method,
            request.url.path,
            dependency,
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
        return outage_response(request, dependency)

    for kind in (
        redis_errors.ConnectionError,
        redis_errors.TimeoutError,
        sa_errors.DBAPIError,
        sa_errors.TimeoutError,
        ConnectionError,
    ):
        app.add_exception_handler(kind, handler)
