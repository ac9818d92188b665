"""Public ids as OpenAI spells them (``file-…``, ``vs_…``, ``vsfb_…``) over UUID keys."""

from __future__ import annotations

import os
import time
import uuid

from libs.errors import NotFound

FILE = "file-"
VECTOR_STORE = "vs_"
FILE_BATCH = "vsfb_"


def encode(prefix: str, key: uuid.UUID) -> str:
    """The public id of ``key``."""
    return prefix + key.hex


def decode(prefix: str, public_id: str, what: str, code: str) -> uuid.UUID:
    """The key of a public id; anything malformed is a 404, as an unknown id is."""
    if public_id.startswith(prefix):
        raw = public_id[len(prefix) :]
        if len(raw) == 32:
            try:
                return uuid.UUID(hex=raw)
            except ValueError:
                pass
    raise not_found(what, public_id, code)


def not_found(what: str, public_id: str, code: str) -> NotFound:
    """The 404 of an unknown id, another organization's included."""
    shown = public_id if len(public_id) <= 80 else public_id[:80] + "…"
    return NotFound(f"No {what} found with id '{shown}'.", code=code)


def file_key(public_id: str) -> uuid.UUID:
    return decode(FILE, public_id, "file", "file_not_found")


def store_key(public_id: str) -> uuid.UUID:
    return decode(VECTOR_STORE, public_id, "vector store", "vector_store_not_found")


def batch_key(public_id: str) -> uuid.UUID:
    return decode(FILE_BATCH, public_id, "file batch", "file_batch_not_found")


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): ids sort by creation, so a list's cursor is
    the id alone and stays valid after its object is deleted."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)
