"""PostgreSQL and Redis errors that are not bugs, in the error shape instead of a 500.

- An outage (a refused or dropped connection, an exhausted pool, PostgreSQL not answering
  within ``DB_COMMAND_TIMEOUT_SECONDS``: libs/db.py): without a handler it is
  an unhandled exception, a 500 ``internal_error`` and a traceback per request, which tells
  a client nothing it can act on. Here it is ``503 service_unavailable`` with
  ``Retry-After`` and the dependency that failed, and one warning line in the log.
- A value PostgreSQL cannot store (SQLSTATE class 22, "data exception": a NUL character in
  a text, an out-of-range number) came from the request: ``422 validation_error``.

Other database errors (a constraint violation nobody handled, a bad query) stay 500s.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi import Request
from starlette.responses import Response
from starlette.types import Scope

from libs.errors import error_response, wants_openai

log = logging.getLogger("aistack.storage_errors")

RETRY_AFTER_S = 2
# connection exceptions; the server shutting down, crashed or starting; too many connections
_OUTAGE_STATES = ("08", "57P01", "57P02", "57P03", "53300")


def _sqlstate(exc: BaseException) -> str:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy error ("" when there is none)."""
    return str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")


def database_timeout(exc: BaseException) -> bool:
    """A ``TimeoutError`` raised by asyncpg: PostgreSQL did not answer within the engine's
    deadline (a statement, the pool's pre-ping or a new connection; libs/db.py:make_engine).

    SQLAlchemy passes it on unwrapped (it drops the connection, as for a cancellation), so
    it is told apart from the timeouts of everything else (``asyncio.timeout`` around a
    Redis call or an HTTP request) by where it came from: asyncpg's code is on its way up.
    """
    if not isinstance(exc, TimeoutError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False


def describe(exc: BaseException) -> str:
    """An outage's reason for a log line: the error's type and first line (a deadline
    passing has no message of its own: it is named)."""
    if database_timeout(exc):
        return "TimeoutError: no answer within the deadline (DB_COMMAND_TIMEOUT_SECONDS)"
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def is_data_error(exc: BaseException) -> bool:
    """A value PostgreSQL refused to store (SQLSTATE class 22), i.e. the request's fault."""
    if "sqlalchemy" not in sys.modules:  # nothing loaded SQLAlchemy: not its error
        return False
    from sqlalchemy import exc as sa_errors

    return isinstance(exc, sa_errors.DataError) or (
        isinstance(exc, sa_errors.DBAPIError) and _sqlstate(exc).startswith("22")
    )


def outage_of(exc: BaseException) -> str | None:
    """Which dependency ``exc`` says is unreachable ("database", "redis"), or None."""
    from redis import exceptions as redis_errors

    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return "redis"
    if "sqlalchemy" not in sys.modules:
        # an app that loads SQLAlchemy late (the llm) and has not: not a database error, and
        # asking must not load it
        return None
    from sqlalchemy import exc as sa_errors

    if isinstance(exc, sa_errors.OperationalError):
        return "database"
    if isinstance(exc, sa_errors.DBAPIError) and (
        exc.connection_invalidated or _sqlstate(exc).startswith(_OUTAGE_STATES)
    ):
        return "database"
    if isinstance(exc, sa_errors.TimeoutError):  # the pool had no connection to give
        return "database"
    # asyncpg's connect raises the socket's own error (SQLAlchemy re-raises it unwrapped)
    if isinstance(exc, ConnectionError):
        return "database"
    if database_timeout(exc):  # hung: no answer within the deadline (libs/db.py)
        return "database"
    return None


def is_conflict(exc: BaseException) -> bool:
    """A unique constraint PostgreSQL enforced (SQLSTATE 23505): two requests created the same
    thing at once, and the route did not handle it."""
    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy import exc as sa_errors
    from sqlalchemy.orm.exc import StaleDataError

    # or an UPDATE/DELETE of a row a concurrent request deleted meanwhile
    return isinstance(exc, StaleDataError) or (
        isinstance(exc, sa_errors.IntegrityError) and _sqlstate(exc) == "23505"
    )


def conflict_response(request: Request) -> Response:
    """The 409 for a write that lost a race to a concurrent one (retrying it is safe)."""
    return error_response(
        409,
        "conflict",
        "A concurrent request changed the same resource; retry",
        openai=wants_openai(request.scope),
    )


def outage_response(request: Request, dependency: str) -> Response:
    """The 503 a client sees while ``dependency`` is unreachable."""
    return error_response(
        503,
        "service_unavailable",
        f"The service's {dependency} is unavailable; retry shortly",
        {"dependency": dependency},
        headers={"Retry-After": str(RETRY_AFTER_S)},
        openai=wants_openai(request.scope),
    )


def data_error_response(request: Request, exc: BaseException) -> Response:
    """The 422 for a value PostgreSQL refused to store (its reason, without the statement)."""
    orig = getattr(exc, "orig", None)
    reason = str(orig or exc).splitlines()[0]
    # asyncpg's text reads "<class 'asyncpg...'>: invalid byte sequence ..."
    reason = reason.rsplit(">: ", 1)[-1][:200]
    return error_response(
        422,
        "validation_error",
        "A value in the request cannot be stored",
        [{"field": "body", "message": reason, "type": "invalid_value"}],
        openai=wants_openai(request.scope),
    )


def storage_error_response(scope: Scope, exc: BaseException) -> Response | None:
    """The answer to an exception no route handled when PostgreSQL or Redis caused it: 503
    for an outage, 422 for a value PostgreSQL refused, 409 for a unique constraint a
    concurrent request won; None for anything else (a 500).

    Rendered for every app by :class:`libs.telemetry.ObservabilityMiddleware`, the outermost
    layer, so one place covers routes, dependencies and hot routes, and an app that loads
    SQLAlchemy late (the llm) needs nothing registered before it does.
    """
    if is_data_error(exc):
        return data_error_response(Request(scope), exc)
    if is_conflict(exc):
        log.warning("%s %s: %s", scope.get("method"), scope.get("path"), describe(exc))
        return conflict_response(Request(scope))
    dependency = outage_of(exc)
    if dependency is None:
        return None
    _log_outage(scope.get("method"), scope.get("path"), dependency, exc)
    return outage_response(Request(scope), dependency)


def _log_outage(method: Any, path: Any, dependency: str, exc: BaseException) -> None:
    # a request the database guard refused without trying: the guard logs the outage once,
    # with how many it refused (libs/db_guard.py), not a line per request
    if not getattr(exc, "logged_by_guard", False):
        log.warning("%s %s: %s unavailable (%s)", method, path, dependency, describe(exc))
