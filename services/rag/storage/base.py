"""The storage interface over obstore (the Rust ``object_store`` crate's Python binding).

One client for both backends: its ``LocalStore`` writes each object to a staging file and
renames it into place (a reader never sees half a file), its ``S3Store`` streams large
objects as multipart uploads; both take an async iterator of chunks, so an upload goes from
the request body to storage a chunk at a time, and both stream reads back the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import NotFoundError

if TYPE_CHECKING:
    from services.rag.settings import RagSettings

READ_CHUNK = 1024 * 1024


class StorageError(Exception):
    """Storage refused or could not be reached."""


class StorageNotFound(StorageError):
    """No object under that key."""


class Storage:
    """Put, read, stream and delete objects by key."""

    def __init__(self, store: Any, kind: str) -> None:
        self.store = store
        self.kind = kind

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Write ``chunks`` under ``key`` (replacing any object there)."""
        try:
            await obstore.put_async(self.store, key, chunks)
        except Exception as exc:
            raise StorageError(f"could not write {key}: {exc}") from exc

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, a chunk at a time."""
        try:
            result = await obstore.get_async(self.store, key)
        except (NotFoundError, FileNotFoundError) as exc:
            raise StorageNotFound(key) from exc
        except Exception as exc:
            raise StorageError(f"could not read {key}: {exc}") from exc
        return _chunks(result.stream(min_chunk_size=READ_CHUNK))

    async def read(self, key: str) -> bytes:
        """The whole object (ingestion parses a file at once)."""
        try:
            result = await obstore.get_async(self.store, key)
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError) as exc:
            raise StorageNotFound(key) from exc
        except Exception as exc:
            raise StorageError(f"could not read {key}: {exc}") from exc

    async def delete(self, key: str) -> None:
        """Remove the object; one already gone is not an error."""
        try:
            await obstore.delete_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return
        except Exception as exc:
            raise StorageError(f"could not delete {key}: {exc}") from exc

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        except Exception as exc:
            raise StorageError(f"could not look up {key}: {exc}") from exc
        return True


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield bytes(chunk)


def local_storage(directory: str | Path) -> Storage:
    """Objects as files under ``directory`` (created if missing)."""
    from obstore.store import LocalStore

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return Storage(LocalStore(prefix=path), "local")


def s3_storage(
    bucket: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    prefix: str = "",
) -> Storage:
    """Objects in an S3-compatible bucket (credentials: given, else the AWS_* environment)."""
    from obstore.store import S3Store

    config: dict[str, Any] = {"region": region}
    if endpoint_url:
        config["endpoint"] = endpoint_url
        # path-style URLs: what MinIO, Ceph and local servers answer
        config["virtual_hosted_style_request"] = False
    if access_key_id:
        config["access_key_id"] = access_key_id
    if secret_access_key:
        config["secret_access_key"] = secret_access_key
    client: dict[str, Any] = {}
    if endpoint_url and endpoint_url.startswith("http://"):
        client["allow_http"] = True
    store = S3Store(bucket, prefix=prefix or None, config=config, client_options=client)  # type: ignore[arg-type]
    return Storage(store, "s3")


def make_storage(settings: RagSettings) -> Storage:
    """The backend the settings choose."""
    if settings.storage_backend == "s3":
        return s3_storage(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            prefix=settings.s3_prefix,
        )
    from services.rag.settings import storage_dir

    return local_storage(storage_dir(settings))
