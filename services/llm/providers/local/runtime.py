"""Model runtimes shared by every LocalProvider of the process: each model is loaded once,
lazily, in its own worker thread, and its jobs run there one at a time so the event loop
never blocks. :func:`drive` relays a generator running on a worker thread to async code; a
consumer that stops reading (a client that went away) stops it at the next item."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.llm.providers.base import ProviderError


class Runtime:
    """One loaded model and the single worker thread that runs it."""

    def __init__(self, name: str, loader: Callable[[], Any]) -> None:
        self._loader = loader
        self._model: Any = None
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pending = 0  # jobs submitted and not finished (running one included)

    def submit(self, limit: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue a job on the worker thread, or refuse it (retryable) when the queue is full."""
        with self._lock:
            if self.pending >= limit:
                raise ProviderError(
                    f"the local model is busy ({self.pending} requests queued)",
                    status=503,
                    retryable=True,
                    provider="local",
                    code="local_busy",
                )
            self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: asyncio.Future[Any]) -> None:
        with self._lock:
            self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: the consumer may have left without awaiting it

    def model(self) -> Any:
        """The loaded model (loads it on first use; call from the worker thread)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._loader()
        return self._model


_runtimes: dict[tuple[Any, ...], Runtime] = {}
_runtimes_lock = threading.Lock()


def shared_runtime(key: tuple[Any, ...], loader: Callable[[], Any]) -> Runtime:
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = Runtime(str(key[0]), loader)
        return runtime


async def drive(
    runtime: Runtime,
    max_queue: int,
    provider: str,
    work: Callable[[threading.Event], Iterator[tuple[str, Any]]],
) -> AsyncIterator[tuple[str, Any]]:
    """Drive a generator in the runtime's worker thread, relaying its items."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone; nobody is listening any more
            cancel.set()

    def target() -> None:
        if cancel.is_set():  # the consumer left while this waited for the worker
            return
        try:
            for item in work(cancel):
                put(item)
                if cancel.is_set():
                    return
            put(("end", None))
        except BaseException as exc:
            put(("error", exc))

    runtime.submit(max_queue, target)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                if isinstance(value, ProviderError):
                    raise value
                raise ProviderError(
                    f"local model failed: {type(value).__name__}: {value}",
                    status=500,
                    provider=provider,
                    code="local_model_error",
                ) from value
            yield kind, value
    finally:
        cancel.set()
