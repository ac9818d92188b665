"""Background work of the rag service (``python -m libs.worker rag``).

- ``ingest_file``: one store file's ingestion (:mod:`services.rag.ingestion.service`),
  enqueued when a file is attached; shown by the jobs service with its progress, cancellable
  and retryable there.
- Two loops the worker runs beside its jobs, at start and then periodically: the reconciler
  gives stalled files (their worker killed, their job lost) a new job, and the purge removes
  expired files and bytes owed a delete; and each organization's storage is sent to billing
  once a day (:mod:`services.rag.files.storage_usage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from libs.http import make_http_client
from libs.queue import JobContext, job
from services.rag.files.purge import purge
from services.rag.files.storage_usage import sample_storage
from services.rag.ingestion.embed import Embedder
from services.rag.ingestion.service import INGEST_FUNCTION, Ingestion, reconcile
from services.rag.settings import RagSettings, get_settings
from services.rag.storage import make_storage

log = logging.getLogger("aistack.rag.tasks")
INGESTION = "rag_ingestion"
STORAGE_SAMPLE_INTERVAL_S = 3600.0


@job(name=INGEST_FUNCTION, timeout=3600, max_tries=10, retry_outages=True)
async def ingest_file(ctx: JobContext, vector_store_id: str, file_id: str, generation: int) -> str:
    """Parse, chunk, embed and index one file of one store (idempotent, resumable)."""
    ingestion: Ingestion = ctx.state[INGESTION]
    try:
        return await ingestion.run(ctx, uuid.UUID(vector_store_id), uuid.UUID(file_id), generation)
    finally:
        _give_back_memory()


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def _limit_arenas() -> None:
    """Parsing runs in threads, and glibc gives each thread its own heap (arena) that keeps
    what a big document needed: two arenas keep the worker's memory near its working set."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def _give_back_memory() -> None:
    """Return the heap a finished file left free to the system (a parsed PDF's pages)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


functions = [ingest_file]
# files ingested at once per worker: the embedder is the limit, and the files in flight keep
# it busy while others parse and write (their embedding requests merge into one call per
# lane, see Embedder). Eight rather than four: bigger merged calls cost the model less per
# text; `make bench rag` ingestion 80 % -> 83 % of the model alone (noise about 2 points)
worker_options = {"max_jobs": 8}


def _settings(ctx: dict[str, Any]) -> RagSettings:
    s = ctx.get("settings")
    return s if isinstance(s, RagSettings) else get_settings()


async def _once(name: str, work: Callable[[], Awaitable[Any]]) -> None:
    try:
        await work()
    except Exception as exc:
        log.warning("%s failed (tried again later): %s", name, exc)


async def _every(seconds: float, name: str, work: Callable[[], Awaitable[Any]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        await _once(name, work)


async def on_startup(ctx: dict[str, Any]) -> None:
    _limit_arenas()
    settings = _settings(ctx)
    http = make_http_client("rag", timeout=settings.embed_timeout_s, retries=0)
    storage = make_storage(settings)
    ctx["rag_http"] = http
    ctx[INGESTION] = Ingestion(ctx["db"], storage, Embedder(http, settings), settings)
    lease = timedelta(seconds=settings.ingest_lease_s)

    async def reconcile_now() -> None:
        await reconcile(ctx["db"], ctx["redis"], lease)

    async def purge_now() -> None:
        await purge(ctx["db"], storage)

    # once before the first job (a restarted worker takes over stalled files at once), then
    # periodically beside the jobs
    await _once("reconcile", reconcile_now)
    await _once("purge", purge_now)

    async def sample_now() -> None:
        await sample_storage(ctx["db"], ctx["redis"])

    await _once("storage usage", sample_now)
    ctx["rag_loops"] = [
        asyncio.create_task(_every(settings.reconcile_interval_s, "reconcile", reconcile_now)),
        asyncio.create_task(_every(settings.purge_interval_s, "purge", purge_now)),
        # the day's sample is the first one taken that day (billing keeps one a day)
        asyncio.create_task(_every(STORAGE_SAMPLE_INTERVAL_S, "storage usage", sample_now)),
    ]


async def on_shutdown(ctx: dict[str, Any]) -> None:
    for task in ctx.get("rag_loops", []):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    http = ctx.get("rag_http")
    if http is not None:
        await http.aclose()
