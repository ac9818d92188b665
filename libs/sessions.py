"""Request-scoped database sessions, without loading SQLAlchemy until one is needed.

The llm service serves chat, embeddings and models without its database; only prompts and
conversations use it. Its routes depend on :data:`SessionDep` from here, and its app builds
the engine on the first session (:class:`LazySessionFactory`), so a process that never
touches the database never imports SQLAlchemy (about 20 MiB of its memory). Services that
always use their database get the same dependency through :mod:`libs.db`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from libs.settings import DB_COMMAND_TIMEOUT_S, DB_GUARD_RETRY_S, DB_POOL_TIMEOUT_S

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Request-scoped session: commit on success, roll back on any error."""
    from libs.db import session_scope

    async with session_scope(request.app.state.session_factory) as session:
        yield session


if TYPE_CHECKING:
    # scope="function": the commit happens before the response is sent: a 2xx is durable
    SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
else:
    # the annotation is only a type for readers; FastAPI uses the dependency
    SessionDep = Annotated[Any, Depends(get_session, scope="function")]


class LazySessionFactory:
    """A session factory whose engine (and SQLAlchemy) is created on the first session.

    Called like ``async_sessionmaker``: ``factory()`` is a new ``AsyncSession``.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int,
        application_name: str,
        command_timeout_s: float = DB_COMMAND_TIMEOUT_S,
        pool_timeout_s: float = DB_POOL_TIMEOUT_S,
        guard_retry_s: float = DB_GUARD_RETRY_S,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.application_name = application_name
        self.command_timeout_s = command_timeout_s
        self.pool_timeout_s = pool_timeout_s
        self.guard_retry_s = guard_retry_s
        self.engine: AsyncEngine | None = None
        self._factory: async_sessionmaker[AsyncSession] | None = None

    def __call__(self) -> AsyncSession:
        factory = self._factory
        if factory is None:
            from libs.db import make_engine, make_session_factory

            self.engine = make_engine(
                self.url,
                pool_size=self.pool_size,
                application_name=self.application_name,
                command_timeout_s=self.command_timeout_s,
                pool_timeout_s=self.pool_timeout_s,
                guard_retry_s=self.guard_retry_s,
            )
            factory = self._factory = make_session_factory(self.engine)
        return factory()

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
