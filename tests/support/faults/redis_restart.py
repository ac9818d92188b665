"""Test helper: a Redis of the test's own that can be stopped and started again (a real
outage: connections refused while it is down, its data back from its AOF file after)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from libs.embedded import EmbeddedRedis, free_port


@contextmanager
def own_redis(folder: Path) -> Iterator[EmbeddedRedis]:
    """A fresh embedded Redis under ``folder``, stopped at the end."""
    server = EmbeddedRedis(folder, port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


async def stop(server: EmbeddedRedis) -> float:
    """Stop the server (SIGTERM, as an operator or an orchestrator would); return the time."""
    await asyncio.to_thread(server.stop)
    assert not server.running()
    return time.monotonic()


async def start(server: EmbeddedRedis) -> None:
    """Start it again on the same port and data folder."""
    await asyncio.to_thread(server.start)
