"""Test helper: a PostgreSQL that hangs, as a client sees it, without touching the shared one.

:class:`HangingProxy` is a TCP proxy, in a thread of its own, in front of the test session's
PostgreSQL. :meth:`HangingProxy.hang` black-holes it: connections (new ones too) are accepted
by the kernel and what is sent is read, but nothing reaches PostgreSQL and nothing comes back,
which is what a stopped, swapping or partitioned server looks like (asyncpg's out-of-band
cancel requests go through the proxy too, so they hang as well). :meth:`HangingProxy.resume`
passes everything held on, as ``SIGCONT`` would. The shared PostgreSQL is never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db import make_engine


class HangingProxy:
    """A TCP proxy to ``upstream_url``'s host and port that can hang and resume."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        assert parts.hostname and parts.port, upstream_url
        self._upstream_url = parts
        self._upstream = (parts.hostname, parts.port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0  # accepted so far

    @property
    def url(self) -> str:
        """The upstream's URL with the proxy's port."""
        parts = self._upstream_url
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _call(self, fn: object) -> object:
        async def run() -> object:
            return fn() if callable(fn) else await fn  # type: ignore[misc]

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def start(self) -> None:
        self._thread.start()

        async def serve() -> None:
            self._flowing.set()
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=256)
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(serve())

    def hang(self) -> None:
        """Stop passing bytes either way (held, not dropped) and stop opening upstreams."""
        self._call(self._flowing.clear)

    def resume(self) -> None:
        """Pass on what was held and everything after."""
        self._call(self._flowing.set)

    def close(self) -> None:
        async def stop() -> None:
            self._flowing.set()
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            self._writers.discard(writer)
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # one side went away (a client dropping a timed-out connection): close both
        finally:
            await self._flowing.wait()  # a close is not passed on while hung either
            with contextlib.suppress(Exception):
                writer.close()


@contextmanager
def hanging_postgres(database_url: str) -> Iterator[HangingProxy]:
    """A proxy to the PostgreSQL at ``database_url``; always resumed and closed at the end."""
    proxy = HangingProxy(database_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


@asynccontextmanager
async def engine_through(proxy: HangingProxy, **options: Any) -> AsyncIterator[AsyncEngine]:
    """An engine on PostgreSQL through ``proxy`` (``options``: :func:`libs.db.make_engine`'s);
    at the end the proxy is resumed, so the engine's connections close, then it is disposed."""
    engine = make_engine(proxy.url, **options)
    try:
        yield engine
    finally:
        proxy.resume()
        await engine.dispose()


def jobs_app_through(proxy: HangingProxy, *, deadline_s: float, guard_retry_s: float) -> FastAPI:
    """The jobs service's app on PostgreSQL through ``proxy``, with short deadlines (its
    DB_COMMAND_TIMEOUT_SECONDS and DB_POOL_TIMEOUT_SECONDS) and guard probe interval."""
    from services.jobs.app import build_app
    from services.jobs.settings import JobsSettings

    settings = JobsSettings(
        database_url=proxy.url,
        db_command_timeout_seconds=deadline_s,
        db_pool_timeout_seconds=deadline_s,
        db_guard_retry_seconds=guard_retry_s,
        log_json=False,
    )
    return build_app(settings)
