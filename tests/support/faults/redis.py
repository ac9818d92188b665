"""Test helper: a Redis of the test's own that can be hung (SIGSTOP: connections are accepted
by the kernel, nothing is ever answered) or killed (connections refused), then brought back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from libs.embedded import EmbeddedRedis, free_port


class FaultyRedis:
    """An embedded redis-server with faults to apply."""

    def __init__(self, folder: Path) -> None:
        self.server = EmbeddedRedis(folder, port=free_port())
        self.hung = False

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def hang(self) -> None:
        """Freeze the process: what a stopped, swapping or partitioned Redis looks like."""
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGSTOP)
        self.hung = True

    def resume(self) -> None:
        if self.hung and self.server.running():
            assert self.server.proc is not None
            os.kill(self.server.proc.pid, signal.SIGCONT)
        self.hung = False

    def kill(self) -> None:
        """Gone: connections are refused until :meth:`start`."""
        self.resume()
        self.server.stop()

    def close(self) -> None:
        self.resume()
        self.server.stop()


@contextmanager
def faulty_redis(folder: Path) -> Iterator[FaultyRedis]:
    """A fresh Redis under ``folder``; always resumed and stopped at the end."""
    redis = FaultyRedis(folder)
    redis.start()
    try:
        yield redis
    finally:
        redis.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 8.0) -> float:
    """Poll ``check`` until it is true; the seconds it took (fails after ``within``)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - started
