"""Who is calling: turns client credentials into a principal (filled in by the identity work)."""

from __future__ import annotations

from starlette.datastructures import Headers

from gateway.routes import Route
from libs.identity import Principal


async def resolve_principal(request_headers: Headers, route: Route) -> Principal | None:
    """The caller's principal, or None when the request carries no identity.

    May raise :class:`libs.errors.AppError` (401/403/429); the proxy renders it.
    """
    return None
