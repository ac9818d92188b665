"""The request context a feature service works in: one unit of work, the caller, the client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionDep
from libs.identity import Principal, PrincipalDep
from libs.redis import RedisDep
from services.auth.settings import AuthSettings
from services.auth.state import AuthState


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Client:
    """Where a request came from (the gateway appends the client address to X-Forwarded-For)."""

    ip: str | None
    user_agent: str


@dataclass
class AuthContext:
    session: AsyncSession
    redis: Redis
    settings: AuthSettings
    client: Client
    # None on public routes, which ignore any forwarded principal
    principal: Principal | None = None


def client_of(request: Request) -> Client:
    """The gateway appends the address it saw to X-Forwarded-For: the last entry is trusted."""
    xff = request.headers.get("x-forwarded-for", "")
    ip = xff.rsplit(",", 1)[-1].strip() if xff.strip() else None
    if not ip and request.client:
        ip = request.client.host
    return Client(
        ip=ip[:64] if ip else None, user_agent=request.headers.get("user-agent", "")[:512]
    )


def _context(
    request: Request, session: AsyncSession, redis: Redis, principal: Principal | None
) -> AuthContext:
    settings = AuthState.of(request).settings
    return AuthContext(
        session=session,
        redis=redis,
        settings=settings,
        client=client_of(request),
        principal=principal,
    )


# the features' service dependencies build on these two. All are coroutines: FastAPI runs a
# plain ``def`` dependency in anyio's thread pool, a hop to a worker thread and back on every
# request for nothing that blocks
async def get_context(
    request: Request, session: SessionDep, redis: RedisDep, principal: PrincipalDep
) -> AuthContext:
    return _context(request, session, redis, principal)


async def get_public_context(request: Request, session: SessionDep, redis: RedisDep) -> AuthContext:
    """Public routes ignore any forwarded principal."""
    return _context(request, session, redis, None)


ContextDep = Annotated[AuthContext, Depends(get_context)]
PublicContextDep = Annotated[AuthContext, Depends(get_public_context)]
