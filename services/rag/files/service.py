"""Files: upload (streamed to storage), list, retrieve, download, delete, expiry."""

from __future__ import annotations

import logging
import mimetypes
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import Database, after_commit, session_scope
from libs.errors import AppError, BadRequest, Forbidden, PayloadTooLarge, ServiceUnavailable
from libs.identity import Principal
from services.rag.core import ids
from services.rag.core.clock import now, unix
from services.rag.core.pages import Order, cursor, envelope
from services.rag.core.plan import OrgLimits, PlanLimits
from services.rag.files.repository import FileRepository
from services.rag.files.schemas import ALL_PURPOSES, EXPIRES_MAX_S, EXPIRES_MIN_S, UPLOAD_PURPOSES
from services.rag.files.upload import MultipartUpload
from services.rag.models import File, StorageDeletion
from services.rag.settings import RagSettings
from services.rag.storage import Storage, StorageError, StorageNotFound

log = logging.getLogger("aistack.rag.files")
# an upload's bytes are deleted this long after they were written unless its file was recorded
ABANDONED_AFTER = timedelta(days=1)


def render(f: File) -> dict[str, Any]:
    return {
        "id": ids.encode(ids.FILE, f.id),
        "object": "file",
        "bytes": f.bytes,
        "created_at": unix(f.created_at),
        "expires_at": unix(f.expires_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
    }


def quota_error(message: str) -> AppError:
    return Forbidden(message, code="quota_exceeded")


def _field_error(field: str, message: str) -> BadRequest:
    return BadRequest(
        message, code="invalid_request", details=[{"field": field, "message": message}]
    )


class FileService:
    def __init__(
        self,
        session: AsyncSession,
        principal: Principal,
        settings: RagSettings,
        storage: Storage,
        db: Database,
        plans: PlanLimits,
    ) -> None:
        self.session = session
        self.plans = plans
        self.db = db
        self.repo = FileRepository(session)
        self.principal = principal
        self.org_id = principal.require_org()
        self.settings = settings
        self.storage = storage

    # --- reads

    async def get(self, public_id: str) -> File:
        f = await self.repo.get_for_org(self.org_id, ids.file_key(public_id), now())
        if f is None:
            raise ids.not_found("file", public_id, "file_not_found")
        return f

    async def list(
        self, *, purpose: str | None, limit: int, order: Order, after: str | None
    ) -> dict[str, Any]:
        rows = await self.repo.page(
            self.org_id,
            now(),
            purpose=purpose,
            limit=limit,
            order=order,
            after=cursor(ids.FILE, after, "after"),
        )
        return envelope(rows, limit, render)

    async def content(self, public_id: str) -> tuple[File, AsyncIterator[bytes]]:
        f = await self.get(public_id)
        try:
            return f, await self.storage.stream(f.storage_key)
        except StorageNotFound:
            log.error("file %s has no bytes in storage (%s)", f.id, f.storage_key)
            raise ids.not_found("file", public_id, "file_not_found") from None
        except StorageError as exc:
            raise ServiceUnavailable(
                "File storage is unavailable", details={"dependency": "storage"}
            ) from exc

    # --- writes

    async def upload(
        self, upload: MultipartUpload, *, purposes: tuple[str, ...] = UPLOAD_PURPOSES
    ) -> File:
        """Stream the file part into storage, then record it (checking the purpose, the
        expiry and the organization's limits); the bytes go again when anything refuses."""
        limits = await self.plans.of(self.org_id)  # read once, outside the org's lock
        limits.require_active()  # a frozen account stores nothing new
        file_id = ids.uuid7()
        key = f"{self.org_id}/{file_id.hex}"
        # before the request's own session takes a connection: one at a time per request
        async with session_scope(self.db) as intent:
            intent.add(StorageDeletion(storage_key=key, not_before=now() + ABANDONED_AFTER))
        count, used = await self.repo.usage(self.org_id)
        self._check_limits(limits, count + 1, used)
        try:
            await self.storage.put(key, upload.file_chunks())
        except Exception as exc:
            await self._discard(key)
            if upload.error is not None:
                raise upload.error from None
            if isinstance(exc, StorageError):
                raise ServiceUnavailable(
                    "File storage is unavailable", details={"dependency": "storage"}
                ) from exc
            raise
        try:
            f = await self._record(upload, key, file_id, purposes, limits)
        except BaseException:
            await self._discard(key)
            raise
        return f

    async def _record(
        self,
        upload: MultipartUpload,
        key: str,
        file_id: uuid.UUID,
        purposes: tuple[str, ...],
        limits: OrgLimits,
    ) -> File:
        if upload.file_parts == 0:
            raise _field_error("file", "Missing required parameter: 'file'.")
        purpose = upload.fields.get("purpose")
        if not purpose:
            raise _field_error("purpose", "Missing required parameter: 'purpose'.")
        if purpose not in purposes:
            raise _field_error(
                "purpose",
                f"Invalid value for 'purpose': '{purpose[:64]}'. Expected one of: "
                + ", ".join(purposes),
            )
        if upload.size == 0:
            raise _field_error("file", "File is empty: 0-byte files cannot be uploaded.")
        created = now()
        expires_at = self._expiry(upload.fields, purpose, created)
        await self.repo.lock_org(self.org_id)
        count, used = await self.repo.usage(self.org_id)
        self._check_limits(limits, count + 1, used + upload.size)
        filename = upload.filename or "upload"
        ctype = upload.content_type
        if not ctype or ctype == "application/octet-stream":
            ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        f = File(
            id=file_id,
            org_id=self.org_id,
            filename=filename,
            purpose=purpose,
            bytes=upload.size,
            sha256=upload.sha256,
            content_type=ctype[:200],
            storage_key=key,
            expires_at=expires_at,
            created_by=self.principal.user_id,
            created_at=created,
            updated_at=created,
        )
        await self.repo.deletion_done([key])  # the bytes are the file's now
        return await self.repo.add(f)

    def _expiry(self, fields: dict[str, str], purpose: str, created: Any) -> Any:
        anchor = fields.get("expires_after[anchor]")
        seconds = fields.get("expires_after[seconds]")
        if anchor is None and seconds is None:
            if purpose == "batch":  # OpenAI: batch files expire after 30 days by default
                return created + timedelta(days=self.settings.batch_file_expiry_days)
            return None
        if anchor != "created_at":
            raise _field_error(
                "expires_after.anchor", "Invalid 'expires_after[anchor]': expected 'created_at'."
            )
        try:
            secs = int(seconds or "")
        except ValueError:
            secs = -1
        if not EXPIRES_MIN_S <= secs <= EXPIRES_MAX_S:
            raise _field_error(
                "expires_after.seconds",
                f"Invalid 'expires_after[seconds]': expected an integer from {EXPIRES_MIN_S} "
                f"to {EXPIRES_MAX_S}.",
            )
        return created + timedelta(seconds=secs)

    def _check_limits(self, limits: OrgLimits, files: int, used_bytes: int) -> None:
        s = self.settings
        if files > s.org_max_files:
            raise quota_error(
                f"Your organization has reached its limit of {s.org_max_files} files; "
                "delete some before uploading more."
            )
        # the plan's storage_bytes, else the setting (None: the plan sets no limit)
        if limits.storage_bytes is not None and used_bytes > limits.storage_bytes:
            raise quota_error(
                f"This upload would exceed your organization's storage limit "
                f"(storage_bytes) of {limits.storage_bytes} bytes."
            )

    async def _discard(self, key: str) -> None:
        try:
            await self.storage.delete(key)
        except StorageError as exc:
            log.warning("could not remove the bytes of a refused upload %s: %s", key, exc)

    async def delete(self, public_id: str) -> dict[str, Any]:
        """Remove the file (from every vector store too, as OpenAI does) and its bytes."""
        f = await self.get(public_id)
        await self.repo.remove(f, now())
        storage, key = self.storage, f.storage_key

        async def drop_bytes() -> None:
            # best effort now; the worker's purge retries what is still owed
            try:
                await storage.delete(key)
            except StorageError as exc:
                log.warning("bytes of deleted file %s left for the purge: %s", key, exc)

        after_commit(self.session, drop_bytes)
        return {"id": public_id, "object": "file", "deleted": True}


def check_internal_purpose(purpose: str) -> None:
    if purpose not in ALL_PURPOSES:
        raise _field_error("purpose", f"Invalid value for 'purpose': '{purpose[:64]}'.")


__all__ = ["FileService", "PayloadTooLarge", "check_internal_purpose", "render"]
