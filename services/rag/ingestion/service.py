"""Ingestion of one store file: parse → chunk → embed → index, resumable per stage.

Idempotent and resumable (arq runs a job at least once; a worker may die anywhere):

- **One worker at a time** holds a file: its job takes a lease on the row (``lease_until``,
  renewed every third of ``RAG_INGEST_LEASE_S`` by a heartbeat while it works) and every write
  checks, under the row's lock, that the lease is still its own. A job finding another live
  lease leaves the file to it; one whose lease was taken from it stops.
- **Parse and chunk** end in one transaction that writes every chunk of the pending
  generation (embeddings empty) and moves the stage to ``chunked``: a job killed before that
  commit left nothing, one killed after it never parses again.
- **Embed** takes the chunks still without an embedding, a batch at a time, each batch
  committed with its vectors: a job starting again embeds only what is left.
- **Index** swaps the generation in one transaction: the pending generation becomes the one
  searches see, the previous one's chunks go, the file is ``completed``. Searches never see a
  half-written generation, and replacing a file's content (attaching it again with another
  chunking) retires the old chunks atomically.
- **Stalled files** (a lease that lapsed, a job lost with Redis) are handed to a new job by
  the worker's reconciler (:func:`reconcile`); chunk rows are unique per (store, file,
  generation, seq), so nothing is ever written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

from libs.db import Database, session_scope
from libs.errors import AccountFrozen
from libs.notify import FileIngestFailed, emit_now, make_event
from libs.queue import (
    JobCancelled,
    JobContext,
    enqueue_prepared,
    is_cancel_requested,
    prepare_job,
)
from libs.storage_errors import outage_of
from services.rag.core.clock import now
from services.rag.ingestion import segment
from services.rag.ingestion.chunk import Draft, chunk
from services.rag.ingestion.embed import Embedder, EmbeddingError
from services.rag.ingestion.parse import ParseError, parse
from services.rag.ingestion.repository import IngestionRepository
from services.rag.metrics import CHUNKS, INGEST_FAILURES, INGEST_FILES, INGEST_STAGE_SECONDS
from services.rag.models import File, VectorStoreFile
from services.rag.settings import RagSettings
from services.rag.storage import Storage, StorageError, StorageNotFound

log = logging.getLogger("aistack.rag.ingestion")
INGEST_FUNCTION = "ingest_file"
# a file whose jobs failed this often without an answer is failed with the last reason
MAX_ATTEMPTS = 5


class _Lost(Exception):
    """The file is no longer this job's (removed, cancelled, leased to another job)."""


class _Failed(Exception):
    def __init__(self, code: str, message: str, stage: str) -> None:
        super().__init__(message)
        self.code, self.message, self.stage = code, message, stage


@dataclass
class Ingestion:
    """What a job needs: the database, storage, the embedder and the settings."""

    db: Database
    storage: Storage
    embedder: Embedder
    settings: RagSettings

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.ingest_lease_s)

    async def run(
        self, jc: JobContext, store_id: uuid.UUID, file_id: uuid.UUID, generation: int
    ) -> str:
        """Bring the file's ``generation`` to completed (or failed); returns what happened."""
        claim = await self._claim(jc, store_id, file_id, generation)
        if claim != "claimed":
            if claim == "cancelled":
                raise JobCancelled(f"ingestion of file {file_id} was cancelled")
            return claim
        try:
            async with self._heartbeat(store_id, file_id, jc.job_id):
                return await self._stages(jc, store_id, file_id, generation)
        except _Lost as exc:
            log.info("ingestion of %s/%s stopped: %s", store_id, file_id, exc)
            if await self._status(store_id, file_id) == "cancelled":
                raise JobCancelled(str(exc)) from None
            return "lost"
        except JobCancelled:
            await self._finish(store_id, file_id, jc.job_id, generation, "cancelled", None, None)
            INGEST_FILES.labels("cancelled").inc()
            raise
        except _Failed as exc:
            if await self._finish(
                store_id, file_id, jc.job_id, generation, "failed", exc.code, exc.message
            ):
                await _notify_failed(jc, store_id, file_id, generation, exc.code, exc.message)
            INGEST_FAILURES.labels(exc.stage, exc.code).inc()
            INGEST_FILES.labels("failed").inc()
            return "failed"
        except Exception as exc:
            if outage_of(exc) is not None:
                raise  # tried again: by arq, else by the reconciler once the lease lapses
            log.exception("ingestion of %s/%s failed", store_id, file_id)
            message = (
                f"Ingestion failed on an internal error ({type(exc).__name__}); retry the file."
            )
            if await self._finish(
                store_id, file_id, jc.job_id, generation, "failed", "server_error", message
            ):
                await _notify_failed(jc, store_id, file_id, generation, "server_error", message)
            INGEST_FAILURES.labels("internal", "server_error").inc()
            INGEST_FILES.labels("failed").inc()
            return "failed"

    async def _claim(
        self, jc: JobContext, store_id: uuid.UUID, file_id: uuid.UUID, generation: int
    ) -> str:
        async with session_scope(self.db) as session:
            repo = IngestionRepository(session)
            sf = await repo.lock(store_id, file_id)
            if sf is None:
                return "gone"
            if (
                sf.status in ("failed", "cancelled")
                and sf.job_id != jc.job_id
                and sf.pending_generation == generation
            ):
                # the jobs service's retry of this file's job: ingest it again from where it was
                sf.status, sf.last_error_code, sf.last_error_message = "in_progress", None, None
                sf.attempts = 0
            if sf.status == "cancelled":
                return "cancelled"
            if sf.status != "in_progress" or sf.pending_generation != generation:
                return "done"
            held = sf.lease_until is not None and sf.lease_until > now() and sf.job_id != jc.job_id
            if held:
                return "busy"
            if sf.attempts >= MAX_ATTEMPTS:
                sf.status = "failed"
                sf.last_error_code = "server_error"
                sf.last_error_message = (
                    f"Ingestion was interrupted {sf.attempts} times (a worker stopping or the "
                    "database failing) and was given up; retry the file."
                )
                sf.lease_until = None
                return "failed"
            sf.job_id = jc.job_id
            sf.lease_until = now() + self.lease
            sf.attempts += 1
            return "claimed"

    @contextlib.asynccontextmanager
    async def _heartbeat(
        self, store_id: uuid.UUID, file_id: uuid.UUID, job_id: str
    ) -> AsyncIterator[None]:
        lost = asyncio.Event()

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.ingest_lease_s / 3)
                try:
                    async with session_scope(self.db) as session:
                        ok = await IngestionRepository(session).renew(
                            store_id, file_id, job_id, self.lease
                        )
                except Exception as exc:  # a missed beat is fine; the next one tries again
                    log.warning("lease of %s/%s not renewed: %s", store_id, file_id, exc)
                    continue
                if not ok:
                    lost.set()
                    return

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def _mine(
        self, store_id: uuid.UUID, file_id: uuid.UUID, job_id: str, generation: int
    ) -> AsyncIterator[tuple[IngestionRepository, VectorStoreFile]]:
        """A transaction on the file's row, locked, that is still this job's to write."""
        async with session_scope(self.db) as session:
            repo = IngestionRepository(session)
            sf = await repo.lock(store_id, file_id)
            if sf is None:
                raise _Lost("the file was removed from the store")
            if sf.status != "in_progress" or sf.pending_generation != generation:
                raise _Lost(f"the file is {sf.status} now")
            if sf.job_id != job_id:
                raise _Lost("another job took the file over")
            sf.lease_until = now() + self.lease
            yield repo, sf

    async def _status(self, store_id: uuid.UUID, file_id: uuid.UUID) -> str | None:
        async with session_scope(self.db) as session:
            sf = await session.get(VectorStoreFile, (store_id, file_id))
            return sf.status if sf else None

    async def _stages(
        self, jc: JobContext, store_id: uuid.UUID, file_id: uuid.UUID, generation: int
    ) -> str:
        async with session_scope(self.db) as session:
            sf = await session.get(VectorStoreFile, (store_id, file_id))
            f = await session.get(File, file_id)
            store = await IngestionRepository(session).store(store_id)
            if sf is None or f is None or store is None:
                raise _Lost("the file or the store was deleted")
            stage, chunking, model = sf.stage, dict(sf.chunking), store.embedding_model
            filename, key = f.filename, f.storage_key
        if stage == "queued":
            await jc.progress(2, f"parsing {filename}")
            drafts = await self._parse_and_chunk(filename, key, chunking)
            async with self._mine(store_id, file_id, jc.job_id, generation) as (repo, sf):
                rows = await asyncio.to_thread(_rows, drafts)
                await repo.write_chunks(sf, generation, rows)
                sf.stage, sf.chunk_count = "chunked", len(rows)
            CHUNKS.inc(len(drafts))
            stage = "chunked"
            await jc.progress(20, f"{len(drafts)} chunks to embed")
        if stage == "chunked":
            await self._embed(jc, store_id, file_id, generation, model)
            stage = "embedded"
        started = time.perf_counter()
        async with self._mine(store_id, file_id, jc.job_id, generation) as (repo, sf):
            await repo.swap_generation(sf, generation)
            sf.usage_bytes = await repo.usage_bytes(sf, generation)
            sf.generation = generation
            sf.status, sf.stage, sf.lease_until = "completed", "done", None
            sf.last_error_code = sf.last_error_message = None
        INGEST_STAGE_SECONDS.labels("index").observe(time.perf_counter() - started)
        INGEST_FILES.labels("completed").inc()
        return "completed"

    async def _parse_and_chunk(
        self, filename: str, key: str, chunking: dict[str, int]
    ) -> list[Draft]:
        started = time.perf_counter()
        try:
            raw = await self.storage.read(key)
        except StorageNotFound as exc:
            raise _Failed(
                "server_error", "The file's content is missing from storage.", "parse"
            ) from exc
        except StorageError as exc:
            raise _Failed(
                "server_error", f"File storage could not be read: {exc}", "parse"
            ) from exc
        try:
            blocks = await asyncio.to_thread(parse, filename, raw)
        except ParseError as exc:
            raise _Failed(exc.code, exc.message, "parse") from exc
        finally:
            del raw
        INGEST_STAGE_SECONDS.labels("parse").observe(time.perf_counter() - started)
        started = time.perf_counter()
        drafts = await asyncio.to_thread(
            chunk, blocks, chunking["max_chunk_size_tokens"], chunking["chunk_overlap_tokens"]
        )
        INGEST_STAGE_SECONDS.labels("chunk").observe(time.perf_counter() - started)
        if not drafts:
            raise _Failed("invalid_file", "The file contains no text.", "chunk")
        return drafts

    async def _embed(
        self, jc: JobContext, store_id: uuid.UUID, file_id: uuid.UUID, generation: int, model: str
    ) -> None:
        batch = self.settings.embed_batch_size
        async with session_scope(self.db) as session:
            sf = await session.get(VectorStoreFile, (store_id, file_id))
            total = sf.chunk_count if sf else 0
            org_id = sf.org_id if sf else None
        done = 0
        while True:
            async with session_scope(self.db) as session:
                sf = await session.get(VectorStoreFile, (store_id, file_id))
                if sf is None:
                    raise _Lost("the file was removed from the store")
                todo = await IngestionRepository(session).unembedded(sf, generation, batch)
            if not todo:
                return
            started = time.perf_counter()
            texts = [(" > ".join(h.split("\x1f")) + "\n" if h else "") + t for _, h, t in todo]

            async def retrying(attempt: int, reason: str, done: int = done) -> None:
                await jc.progress(
                    20 + 75 * done / max(total, 1), f"embedding: retry {attempt} ({reason[:120]})"
                )

            try:
                vectors = await self.embedder.embed(
                    texts,
                    model=model,
                    input_type="passage",
                    org_id=org_id or uuid.UUID(int=0),
                    user_id=None,
                    on_retry=retrying,
                )
            except EmbeddingError as exc:
                raise _Failed("server_error", f"Embedding failed: {exc}", "embed") from exc
            except AccountFrozen as exc:
                # failed, not retried: attached again once the invoice is settled
                raise _Failed("server_error", f"Embedding refused: {exc.message}", "embed") from exc
            INGEST_STAGE_SECONDS.labels("embed").observe(time.perf_counter() - started)
            async with self._mine(store_id, file_id, jc.job_id, generation) as (repo, sf):
                store = await repo.store(store_id)
                dims = len(vectors[0])
                if store is not None and store.embedding_dims is None:
                    await repo.ensure_index(dims)
                    store.embedding_dims = dims
                elif store is not None and store.embedding_dims != dims:
                    raise _Failed(
                        "server_error",
                        f"The embedding model '{model}' returned {dims}-dimensional vectors; "
                        f"this store holds {store.embedding_dims}-dimensional ones.",
                        "embed",
                    )
                await repo.write_embeddings([i for i, _, _ in todo], vectors)
            done += len(todo)
            await jc.progress(20 + 75 * done / max(total, 1), f"embedded {done} of {total} chunks")

    async def _finish(
        self,
        store_id: uuid.UUID,
        file_id: uuid.UUID,
        job_id: str,
        generation: int,
        status: str,
        code: str | None,
        message: str | None,
    ) -> bool:
        """End the file's ingestion; whether it took ``status`` now."""
        async with session_scope(self.db) as session:
            repo = IngestionRepository(session)
            sf = await repo.lock(store_id, file_id)
            if sf is None or sf.job_id != job_id or sf.pending_generation != generation:
                return False
            took = sf.status == "in_progress"
            if took:
                sf.status = status
                sf.last_error_code, sf.last_error_message = code, message
            sf.lease_until = None
            sf.stage = "queued"
            await repo.drop_generation(sf, generation)
        return took


async def _notify_failed(
    jc: JobContext,
    store_id: uuid.UUID,
    file_id: uuid.UUID,
    generation: int,
    code: str,
    message: str,
) -> None:
    """Tell whoever added the file (the organization's admins when nobody did) that it failed
    (libs/notify; after the commit that marked it failed, once per file and generation)."""
    if jc.org_id is None:
        return
    try:
        event = make_event(
            "vector_store.file.failed",
            FileIngestFailed(
                vector_store_id=str(store_id),
                file_id=str(file_id),
                error_code=code[:64],
                error_message=message[:2000],
            ),
            org_id=uuid.UUID(jc.org_id),
            user_id=uuid.UUID(jc.user_id) if jc.user_id else None,
            subject={"vector_store_id": store_id, "file_id": file_id},
            key=f"{file_id}:{generation}",
            source="rag",
        )
        await emit_now(jc.redis, [event])
    except Exception as exc:  # the file's status says it; the notice is a courtesy
        log.warning("failed ingestion of %s not notified: %s", file_id, exc)


def _rows(drafts: list[Draft]) -> list[dict[str, Any]]:
    rows = []
    for seq, d in enumerate(drafts):
        headings = "\x1f".join(d.headings)
        body = d.text.replace("\x00", "")
        rows.append(
            {
                "seq": seq,
                "text": body,
                "headings": headings.replace("\x00", ""),
                "tokens": d.tokens,
                "tsv": segment.tsvector_literal(" ".join(d.headings) + "\n" + body),
            }
        )
    return rows


async def reconcile(db: Database, redis: Redis, lease: timedelta, limit: int = 500) -> int:
    """Give every stalled in-progress file a new job; returns how many."""
    from arq.constants import in_progress_key_prefix, job_key_prefix

    jobs = []
    async with session_scope(db) as session:
        repo = IngestionRepository(session)
        moment = now()
        for sf in await repo.stalled(moment, limit):
            if sf.job_id and await is_cancel_requested(redis, sf.job_id):
                # cancelled from the jobs service before it ran: the file is cancelled too
                sf.status, sf.lease_until, sf.stage = "cancelled", None, "queued"
                await repo.drop_generation(sf, sf.pending_generation)
                continue
            if sf.lease_until is None and sf.job_id:
                # no lease yet: waiting in the queue (left alone), its job lost (Redis lost it),
                # or claimed by a worker that died before taking the lease (a live one takes it
                # at once): arq keeps that claim until the job's timeout, so it is not waited for
                waiting = await redis.exists(job_key_prefix + sf.job_id)
                claimed = await redis.exists(in_progress_key_prefix + sf.job_id)
                if waiting and not claimed:
                    continue
                if claimed and moment - sf.updated_at < lease:
                    continue
            job = prepare_job(
                service="rag",
                function=INGEST_FUNCTION,
                args=[str(sf.vector_store_id), str(sf.file_id), sf.pending_generation],
                org_id=sf.org_id,
            )
            log.info(
                "file %s of store %s stalled (%s); ingestion handed to job %s",
                sf.file_id,
                sf.vector_store_id,
                "its worker stopped" if sf.lease_until else "its job was lost",
                job.job_id,
            )
            sf.job_id, sf.lease_until = job.job_id, None
            await repo.touch(sf)
            jobs.append(job)
    for i in range(0, len(jobs), 500):
        await enqueue_prepared(redis, jobs[i : i + 500])
    return len(jobs)
