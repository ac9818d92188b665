"""The worker's purge: expired files go (rows and bytes), and bytes owed a delete are deleted
(a file deleted while storage was down, an upload whose request died)."""

from __future__ import annotations

import logging

from libs.db import Database, session_scope
from services.rag.core.clock import now
from services.rag.files.repository import FileRepository
from services.rag.storage import Storage, StorageError

log = logging.getLogger("aistack.rag.purge")
BATCH = 200


async def purge(db: Database, storage: Storage) -> tuple[int, int]:
    """Expired files removed, and storage objects deleted; (files, objects)."""
    files = 0
    while True:
        async with session_scope(db) as session:
            repo = FileRepository(session)
            expired = await repo.expired(now(), BATCH)
            for f in expired:
                await repo.remove(f, now())
        files += len(expired)
        if len(expired) < BATCH:
            break
    objects = 0
    while True:
        async with session_scope(db) as session:
            repo = FileRepository(session)
            keys = await repo.pending_deletions(now(), BATCH)
            done = []
            for key in keys:
                try:
                    await storage.delete(key)
                except StorageError as exc:
                    log.warning("storage delete of %s failed (tried again later): %s", key, exc)
                    continue
                done.append(key)
            if done:
                await repo.deletion_done(done)
        objects += len(done)
        if len(keys) < BATCH or not done:
            break
    if files or objects:
        log.info("purged %d expired files and %d stored objects", files, objects)
    return files, objects
