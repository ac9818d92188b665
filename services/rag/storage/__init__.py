"""Where uploaded files' bytes live: one interface (:class:`Storage`), a local folder by default
or an S3-compatible bucket for deployments with several replicas."""

from services.rag.storage.base import Storage, StorageError, StorageNotFound, make_storage

__all__ = ["Storage", "StorageError", "StorageNotFound", "make_storage"]
