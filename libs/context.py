"""Per-request and per-job context carried in contextvars (request id, principal)."""

from __future__ import annotations

import os
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_request_id() -> str:
    """Return a fresh request id: 32 random hex digits (``os.urandom``: a quarter of
    ``uuid4().hex``'s cost, on the path of every request)."""
    return os.urandom(16).hex()


def get_request_id() -> str | None:
    """Return the request id of the current request or job, if any."""
    return request_id_var.get()
