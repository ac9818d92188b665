"""Database access: the engine with its deadlines and guard, sessions, and the request's session.

One way for every service: the app's :class:`Database` (``app.state.db``) builds its engine at
start-up, or on the first session for an app that rarely needs it (``use_database="lazy"``:
the llm serves chat without its database). The request-scoped session (:data:`SessionDep`)
commits when the handler returns and rolls back when it raises; services only ``flush``.
Nothing connects at import time.

SQLAlchemy is imported by the functions that build engines, not by this module, so a lazy
app loads it (about 20 MiB) with its first session; models and repositories are in
:mod:`libs.orm`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Depends, Request

from libs.settings import DB_COMMAND_TIMEOUT_S, DB_GUARD_RETRY_S, DB_POOL_TIMEOUT_S
from libs.state import AppState

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_sessionmaker,
    )

CONNECT_TIMEOUT_S = 5.0
SessionFactory = Callable[[], "AsyncSession"]


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    application_name: str = "aistack",
    command_timeout_s: float = DB_COMMAND_TIMEOUT_S,
    pool_timeout_s: float = DB_POOL_TIMEOUT_S,
    guard_retry_s: float | None = DB_GUARD_RETRY_S,
) -> AsyncEngine:
    """Create the async engine (asyncpg) for a service.

    Every wait on PostgreSQL has a deadline, so a hung server (stopped, swapping, a
    black-holed network: the kernel accepts, nothing answers) cannot hang a request or a
    background loop: ``command_timeout_s`` for each statement's answer (BEGIN, the pool's
    pre-ping and COMMIT too), ``min(5 s, command_timeout_s)`` for a new connection,
    ``pool_timeout_s`` for a free connection of the pool. Past one, asyncpg raises
    ``TimeoutError``; SQLAlchemy drops that connection (closed within 2 s more, never
    returned to the pool) and :func:`libs.storage_errors.outage_of` calls it a database
    outage (503 ``service_unavailable``).

    Past the first one, the engine's :class:`libs.db_guard.DatabaseGuard` refuses
    connections at once (the same 503) until a probe every ``guard_retry_s`` seconds
    (``DB_GUARD_RETRY_SECONDS``) sees PostgreSQL answer, so a hung server costs one request
    the deadline, not every request. ``guard_retry_s=None``: no guard (every call waits).
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    from libs.db_guard import GuardedPool

    engine = create_async_engine(
        url,
        # JSONB keeps numbers as numeric: 1e30 comes back as the digits of an integer, which
        # the standard library reads as a 101-bit int that no JSON encoder here can write
        # again (a conversation's export answered 500). orjson reads it back as the float it was.
        json_deserializer=orjson.loads,
        poolclass=None if guard_retry_s is None else GuardedPool,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout_s,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "server_settings": {"application_name": application_name},
            "timeout": min(CONNECT_TIMEOUT_S, command_timeout_s),
            "command_timeout": command_timeout_s,
        },
    )
    if guard_retry_s is not None:
        _guard(engine, application_name, guard_retry_s)
    return engine


def _guard(engine: AsyncEngine, name: str, retry_s: float) -> None:
    """Give ``engine`` its :class:`libs.db_guard.DatabaseGuard`.

    Checkouts go through it (:class:`libs.db_guard.GuardedPool`: refused while down; a
    pre-ping or connect past its deadline marks it down). A statement (or COMMIT) past its
    deadline makes SQLAlchemy invalidate the connection with asyncpg's ``TimeoutError``: the
    pool's ``invalidate`` event tells the guard, at no cost to statements that answer.
    """
    from sqlalchemy import event

    from libs.db_guard import DatabaseGuard, GuardedPool

    guard = DatabaseGuard(name, retry_s=retry_s)

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    guard.ping = ping
    pool = engine.sync_engine.pool
    assert isinstance(pool, GuardedPool)
    pool.guard = guard

    def invalidated(_dbapi: Any, _record: Any, exc: BaseException | None) -> None:
        guard.observe(exc)

    # kept by the pool engine.dispose() puts in its place (SQLAlchemy passes its dispatch on)
    event.listen(pool, "invalidate", invalidated)


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory with expire_on_commit off (objects stay readable after commit)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class Database:
    """A service's PostgreSQL: its engine, built on first use, and its sessions.

    Called like a session factory: ``db()`` is a new ``AsyncSession``.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        application_name: str = "aistack",
        command_timeout_s: float = DB_COMMAND_TIMEOUT_S,
        pool_timeout_s: float = DB_POOL_TIMEOUT_S,
        guard_retry_s: float | None = DB_GUARD_RETRY_S,
    ) -> None:
        self.url = url
        self.options: dict[str, Any] = {
            "pool_size": pool_size,
            "application_name": application_name,
            "command_timeout_s": command_timeout_s,
            "pool_timeout_s": pool_timeout_s,
            "guard_retry_s": guard_retry_s,
        }
        self._engine: AsyncEngine | None = None
        self._factory: SessionFactory | None = None
        self._owns_engine = True

    @classmethod
    def joined(cls, connection: AsyncConnection) -> Database:
        """A database whose sessions live inside ``connection``'s transaction, each in a
        savepoint of its own (tests: everything the app writes is rolled back with it)."""
        from sqlalchemy.ext.asyncio import async_sessionmaker

        db = cls(connection.engine.url.render_as_string(hide_password=False))
        db._engine = connection.engine
        db._owns_engine = False
        db._factory = async_sessionmaker(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        return db

    @property
    def engine(self) -> AsyncEngine:
        """The engine, built now if nothing needed it yet."""
        if self._engine is None:
            self._engine = make_engine(self.url, **self.options)
        return self._engine

    @property
    def built(self) -> bool:
        """Whether the engine exists (a lazy database nothing has needed yet: False)."""
        return self._engine is not None

    def __call__(self) -> AsyncSession:
        factory = self._factory
        if factory is None:
            factory = self._factory = make_session_factory(self.engine)
        return factory()

    async def aclose(self) -> None:
        """Close the engine's connections."""
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()


AfterCommit = Callable[[], Awaitable[Any]]


def after_commit(session: AsyncSession, hook: AfterCommit) -> None:
    """Run ``hook`` once the session's transaction commits; drop it if it rolls back."""
    session.info.setdefault("after_commit", []).append(hook)


async def commit(session: AsyncSession) -> None:
    """Commit, then run the after-commit hooks (for example enqueueing jobs)."""
    await session.commit()
    hooks: list[AfterCommit] = session.info.pop("after_commit", [])
    for hook in hooks:
        await hook()


async def rollback(session: AsyncSession) -> None:
    """Roll back and forget every after-commit hook."""
    session.info.pop("after_commit", None)
    await session.rollback()


@asynccontextmanager
async def session_scope(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A unit of work: commit on success (then the after-commit hooks), roll back on error."""
    async with factory() as session:
        try:
            yield session
            await commit(session)
        except BaseException:
            await rollback(session)
            raise


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Request-scoped session: commit on success, roll back on any error."""
    async with session_scope(AppState.of(request).db) as session:
        yield session


if TYPE_CHECKING:
    # scope="function": the commit happens before the response is sent: a 2xx is durable
    SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
else:
    # the annotation is only a type for readers; FastAPI uses the dependency
    SessionDep = Annotated[Any, Depends(get_session, scope="function")]
