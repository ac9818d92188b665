"""Background work of the rag service (``python -m libs.worker rag``).

- ``ingest_file``: one store file's ingestion (:mod:`services.rag.ingestion.service`),
  enqueued when a file is attached; shown by the jobs service with its progress, cancellable
  and retryable there.
- Two loops the worker runs beside its jobs, at start and then periodically: the reconciler
  gives stalled files (their worker killed, their job lost) a new job, and the purge removes
  expired files and bytes owed a delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from libs.http import make_http_client
from libs.queue import JobContext, job
from services.rag.files.purge import purge
from services.rag.ingestion.embed import Embedder
from services.rag.ingestion.service import INGEST_FUNCTION, Ingestion, reconcile
from services.rag.settings import RagSettings, get_settings
from services.rag.storage import make_storage

log = logging.getLogger("aistack.rag.tasks")
INGESTION = "rag_ingestion"


@job(name=INGEST_FUNCTION, timeout=6 * 3600, max_tries=10, retry_outages=True)
async def ingest_file(ctx: JobContext, vector_store_id: str, file_id: str, generation: int) -> str:
    """Parse, chunk, embed and index one file of one store (idempotent, resumable)."""
    ingestion: Ingestion = ctx.state[INGESTION]
    return await ingestion.run(ctx, uuid.UUID(vector_store_id), uuid.UUID(file_id), generation)


functions = [ingest_file]


def _settings(ctx: dict[str, Any]) -> RagSettings:
    s = ctx.get("settings")
    return s if isinstance(s, RagSettings) else get_settings()


async def _every(seconds: float, name: str, work: Callable[[], Awaitable[Any]]) -> None:
    while True:
        try:
            await work()
        except Exception as exc:
            log.warning("%s failed (tried again in %.0f s): %s", name, seconds, exc)
        await asyncio.sleep(seconds)


async def on_startup(ctx: dict[str, Any]) -> None:
    settings = _settings(ctx)
    http = make_http_client("rag", timeout=settings.embed_timeout_s, retries=0)
    storage = make_storage(settings)
    ctx["rag_http"] = http
    ctx[INGESTION] = Ingestion(ctx["db"], storage, Embedder(http, settings), settings)
    ctx["rag_loops"] = [
        asyncio.create_task(
            _every(
                settings.reconcile_interval_s,
                "reconcile",
                lambda: reconcile(ctx["db"], ctx["redis"]),
            )
        ),
        asyncio.create_task(
            _every(settings.purge_interval_s, "purge", lambda: purge(ctx["db"], storage))
        ),
    ]


async def on_shutdown(ctx: dict[str, Any]) -> None:
    for task in ctx.get("rag_loops", []):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    http = ctx.get("rag_http")
    if http is not None:
        await http.aclose()
