"""Vector stores (knowledge bases), the files attached to them and file batches.

Attaching a file schedules its ingestion (:mod:`services.rag.ingestion`) as a job of the
shared queue, sent once the transaction commits; the counts and statuses the API shows are
read from the store files' rows, so they are never out of step with them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import after_commit
from libs.errors import BadRequest, Forbidden
from libs.identity import Principal
from libs.queue import PreparedJob, enqueue_prepared, prepare_job
from services.rag.core import ids
from services.rag.core.clock import now, unix
from services.rag.core.pages import Order, cursor, envelope
from services.rag.core.plan import PlanLimits
from services.rag.files.repository import FileRepository
from services.rag.models import FileBatch, VectorStore, VectorStoreFile
from services.rag.settings import RagSettings
from services.rag.vector_stores.repository import (
    FileBatchRepository,
    StoreFileRepository,
    VectorStoreRepository,
)
from services.rag.vector_stores.schemas import (
    FileBatchCreate,
    StoreFileCreate,
    StoreFileUpdate,
    VectorStoreCreate,
    VectorStoreUpdate,
    resolve_chunking,
)

INGEST_FUNCTION = "ingest_file"
CONTENT_PAGE = 200


def store_status(store: VectorStore, counts: dict[str, int]) -> str:
    if store.expires_at is not None and store.expires_at <= now():
        return "expired"
    return "in_progress" if counts.get("in_progress") else "completed"


def render_store(store: VectorStore, counts: dict[str, int], usage: int) -> dict[str, Any]:
    expires_after = (
        {"anchor": "last_active_at", "days": store.expires_after_days}
        if store.expires_after_days
        else None
    )
    return {
        "id": ids.encode(ids.VECTOR_STORE, store.id),
        "object": "vector_store",
        "created_at": unix(store.created_at),
        "name": store.name,
        "usage_bytes": usage,
        "file_counts": counts,
        "status": store_status(store, counts),
        "expires_after": expires_after,
        "expires_at": unix(store.expires_at),
        "last_active_at": unix(store.last_active_at),
        "metadata": store.meta or {},
        "description": store.description,
        "embedding_model": store.embedding_model,
    }


def render_file(sf: VectorStoreFile) -> dict[str, Any]:
    last_error = (
        {"code": sf.last_error_code, "message": sf.last_error_message or ""}
        if sf.last_error_code
        else None
    )
    return {
        "id": ids.encode(ids.FILE, sf.file_id),
        "object": "vector_store.file",
        "usage_bytes": sf.usage_bytes,
        "created_at": unix(sf.created_at),
        "vector_store_id": ids.encode(ids.VECTOR_STORE, sf.vector_store_id),
        "status": sf.status,
        "last_error": last_error,
        "chunking_strategy": {"type": "static", "static": sf.chunking},
        "attributes": sf.attributes or {},
    }


def render_batch(batch: FileBatch, counts: dict[str, int]) -> dict[str, Any]:
    status = batch.status
    if status == "in_progress" and not counts["in_progress"]:
        status = "completed"
    elif status == "cancelling" and not counts["in_progress"]:
        status = "cancelled"
    return {
        "id": ids.encode(ids.FILE_BATCH, batch.id),
        "object": "vector_store.files_batch",
        "created_at": unix(batch.created_at),
        "vector_store_id": ids.encode(ids.VECTOR_STORE, batch.vector_store_id),
        "status": status,
        "file_counts": counts,
    }


class VectorStoreService:
    def __init__(
        self,
        session: AsyncSession,
        principal: Principal,
        settings: RagSettings,
        redis: Redis,
        plans: PlanLimits,
    ) -> None:
        self.session = session
        self.plans = plans
        self.principal = principal
        self.org_id = principal.require_org()
        self.settings = settings
        self.redis = redis
        self.stores = VectorStoreRepository(session)
        self.files = StoreFileRepository(session)
        self.batches = FileBatchRepository(session)
        self._jobs: list[PreparedJob] = []

    # --- stores

    async def store(self, public_id: str, *, lock: bool = False) -> VectorStore:
        key = ids.store_key(public_id)
        getter = self.stores.lock_for_org if lock else self.stores.get_for_org
        store = await getter(self.org_id, key)
        if store is None:
            raise ids.not_found("vector store", public_id, "vector_store_not_found")
        return store

    async def rendered(self, store: VectorStore) -> dict[str, Any]:
        counts, usage = (await self.stores.stats([store.id]))[store.id]
        return render_store(store, counts, usage)

    async def create(self, body: VectorStoreCreate) -> dict[str, Any]:
        # the plan's vector_stores, else the setting (None: the plan sets no limit)
        limits = await self.plans.of(self.org_id)  # read before the org's lock
        if body.file_ids:
            limits.require_active()  # ingestion refused while the account is frozen
        limit = limits.vector_stores
        await self.stores.lock_org(self.org_id)
        if limit is not None and await self.stores.count_for_org(self.org_id) >= limit:
            raise Forbidden(
                f"Your organization has reached its limit (vector_stores) of {limit} "
                "vector stores; delete one or move to a larger plan.",
                code="quota_exceeded",
            )
        created = now()
        store = VectorStore(
            id=ids.uuid7(),
            org_id=self.org_id,
            name=body.name or "",
            description=body.description,
            meta=body.metadata or {},
            embedding_model=body.embedding_model or self.settings.embedding_model,
            expires_after_days=body.expires_after.days if body.expires_after else None,
            last_active_at=created,
            created_by=self.principal.user_id,
            created_at=created,
            updated_at=created,
        )
        if body.expires_after:
            store.expires_at = created + timedelta(days=body.expires_after.days)
        await self.stores.add(store)
        if body.file_ids:
            entries = [
                StoreFileCreate(file_id=f, chunking_strategy=body.chunking_strategy)
                for f in dict.fromkeys(body.file_ids)
            ]
            await self._attach(store, entries, batch=None, param="file_ids")
        self._send_jobs()
        return await self.rendered(store)

    async def list_stores(
        self, *, limit: int, order: Order, after: str | None, before: str | None
    ) -> dict[str, Any]:
        rows = await self.stores.page(
            self.org_id,
            limit=limit,
            order=order,
            after=cursor(ids.VECTOR_STORE, after, "after"),
            before=cursor(ids.VECTOR_STORE, before, "before"),
        )
        stats = await self.stores.stats(s.id for s in rows[:limit])
        return envelope(rows, limit, lambda s: render_store(s, *stats[s.id]))

    async def update(self, public_id: str, body: VectorStoreUpdate) -> dict[str, Any]:
        store = await self.store(public_id, lock=True)
        fields = body.model_fields_set
        if "name" in fields and body.name is not None:
            store.name = body.name
        if "metadata" in fields:
            store.meta = body.metadata or {}
        if "expires_after" in fields:
            if body.expires_after is None:
                store.expires_after_days = None
                store.expires_at = None
            else:
                store.expires_after_days = body.expires_after.days
                anchor = store.last_active_at or now()
                store.expires_at = anchor + timedelta(days=body.expires_after.days)
        store.updated_at = now()
        await self.session.flush()
        return await self.rendered(store)

    async def delete(self, public_id: str) -> dict[str, Any]:
        store = await self.store(public_id, lock=True)
        await self.stores.delete(store)
        return {"id": public_id, "object": "vector_store.deleted", "deleted": True}

    # --- store files

    async def store_file(self, store: VectorStore, file_public_id: str) -> VectorStoreFile:
        sf = await self.files.get(store.id, ids.file_key(file_public_id))
        if sf is None:
            raise ids.not_found("vector store file", file_public_id, "file_not_found")
        return sf

    async def attach(self, public_id: str, body: StoreFileCreate) -> dict[str, Any]:
        (await self.plans.of(self.org_id)).require_active()
        store = await self.store(public_id, lock=True)
        (sf,) = await self._attach(store, [body], batch=None, param="file_id")
        self._send_jobs()
        return render_file(sf)

    async def _attach(
        self,
        store: VectorStore,
        entries: list[StoreFileCreate],
        batch: FileBatch | None,
        param: str,
    ) -> list[VectorStoreFile]:
        """Attach files (or attach them again): each new or changed one is scheduled."""
        keys = [ids.decode(ids.FILE, e.file_id, "file", "file_not_found") for e in entries]
        found = await FileRepository(self.session).get_many(self.org_id, keys, now())
        for e, k in zip(entries, keys, strict=True):
            if k not in found:
                err = ids.not_found("file", e.file_id, "file_not_found")
                err.details = [{"field": param, "message": err.message}]
                raise err
        existing = await self.files.existing(store.id, keys)
        out = []
        for e, k in zip(entries, keys, strict=True):
            chunking = resolve_chunking(e.chunking_strategy)
            sf = existing.get(k)
            if sf is None:
                sf = VectorStoreFile(
                    vector_store_id=store.id,
                    file_id=k,
                    org_id=self.org_id,
                    status="in_progress",
                    chunking=chunking,
                    attributes=e.attributes,
                    usage_bytes=0,
                    batch_id=batch.id if batch else None,
                    generation=0,
                    pending_generation=1,
                    stage="queued",
                    chunk_count=0,
                    attempts=0,
                )
                self.session.add(sf)
                existing[k] = sf
                self._schedule(sf)
            else:
                if e.attributes is not None:
                    sf.attributes = e.attributes
                if batch is not None:
                    sf.batch_id = batch.id
                if sf.chunking != chunking or sf.status in ("failed", "cancelled"):
                    # ingested again beside the current chunks, swapped in when done
                    sf.chunking = chunking
                    sf.pending_generation = max(sf.generation, sf.pending_generation) + 1
                    sf.status, sf.stage = "in_progress", "queued"
                    sf.last_error_code = sf.last_error_message = None
                    sf.lease_until = None
                    self._schedule(sf)
            out.append(sf)
        await self.session.flush()
        return out

    def _schedule(self, sf: VectorStoreFile) -> None:
        job = prepare_job(
            service="rag",
            function=INGEST_FUNCTION,
            args=[str(sf.vector_store_id), str(sf.file_id), sf.pending_generation],
            org_id=self.org_id,
            user_id=self.principal.user_id,
        )
        sf.job_id = job.job_id
        self._jobs.append(job)

    def _send_jobs(self) -> None:
        jobs, self._jobs = self._jobs, []
        if not jobs:
            return
        redis = self.redis

        async def send() -> None:
            # in slices: a batch of 2,000 files is one script call per 500 jobs
            for i in range(0, len(jobs), 500):
                await enqueue_prepared(redis, jobs[i : i + 500])

        after_commit(self.session, send)

    async def list_files(
        self,
        public_id: str,
        *,
        limit: int,
        order: Order,
        after: str | None,
        before: str | None,
        status: str | None,
        batch_public_id: str | None = None,
    ) -> dict[str, Any]:
        store = await self.store(public_id)
        batch_id = None
        if batch_public_id is not None:
            batch_id = (await self._batch(store, batch_public_id)).id
        rows = await self.files.page(
            store.id,
            limit=limit,
            order=order,
            after=cursor(ids.FILE, after, "after"),
            before=cursor(ids.FILE, before, "before"),
            status=status,
            batch_id=batch_id,
        )
        return envelope(rows, limit, render_file)

    async def get_file(self, public_id: str, file_public_id: str) -> dict[str, Any]:
        store = await self.store(public_id)
        return render_file(await self.store_file(store, file_public_id))

    async def update_file(
        self, public_id: str, file_public_id: str, body: StoreFileUpdate
    ) -> dict[str, Any]:
        store = await self.store(public_id)
        sf = await self.store_file(store, file_public_id)
        sf.attributes = body.attributes
        sf.updated_at = now()
        await self.session.flush()
        return render_file(sf)

    async def delete_file(self, public_id: str, file_public_id: str) -> dict[str, Any]:
        store = await self.store(public_id, lock=True)
        sf = await self.store_file(store, file_public_id)
        await self.files.delete(sf)
        return {"id": file_public_id, "object": "vector_store.file.deleted", "deleted": True}

    async def file_content(
        self, public_id: str, file_public_id: str, page: str | None
    ) -> dict[str, Any]:
        store = await self.store(public_id)
        sf = await self.store_file(store, file_public_id)
        try:
            offset = max(0, int(page)) if page else 0
        except ValueError:
            raise BadRequest(
                "Invalid 'page'", code="invalid_request", details=[{"field": "page"}]
            ) from None
        rows = await self.files.content(sf, offset, CONTENT_PAGE)
        more = len(rows) > CONTENT_PAGE
        return {
            "object": "vector_store.file_content.page",
            "data": [{"type": "text", "text": t} for _, t in rows[:CONTENT_PAGE]],
            "has_more": more,
            "next_page": str(offset + CONTENT_PAGE) if more else None,
        }

    # --- batches

    async def _batch(self, store: VectorStore, batch_public_id: str) -> FileBatch:
        batch = await self.batches.get_in_store(
            self.org_id, store.id, ids.batch_key(batch_public_id)
        )
        if batch is None:
            raise ids.not_found("file batch", batch_public_id, "file_batch_not_found")
        return batch

    async def create_batch(self, public_id: str, body: FileBatchCreate) -> dict[str, Any]:
        entries = body.entries()
        (await self.plans.of(self.org_id)).require_active()
        store = await self.store(public_id, lock=True)
        batch = FileBatch(
            id=ids.uuid7(), vector_store_id=store.id, org_id=self.org_id, status="in_progress"
        )
        await self.batches.add(batch)
        seen: dict[str, StoreFileCreate] = {}
        for e in entries:
            seen[e.file_id] = e  # a file named twice: its last entry counts
        await self._attach(store, list(seen.values()), batch=batch, param="file_ids")
        self._send_jobs()
        await self.session.refresh(batch)
        return render_batch(batch, await self.files.batch_counts(batch.id))

    async def get_batch(self, public_id: str, batch_public_id: str) -> dict[str, Any]:
        store = await self.store(public_id)
        batch = await self._batch(store, batch_public_id)
        return render_batch(batch, await self.files.batch_counts(batch.id))

    async def cancel_batch(self, public_id: str, batch_public_id: str) -> dict[str, Any]:
        store = await self.store(public_id)
        batch = await self._batch(store, batch_public_id)
        counts = await self.files.batch_counts(batch.id)
        if batch.status == "in_progress" and counts["in_progress"]:
            await self.files.cancel_batch(batch.id)
            batch.status = "cancelled"
            await self.session.flush()
            counts = await self.files.batch_counts(batch.id)
        return render_batch(batch, counts)
