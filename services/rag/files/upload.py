"""A multipart upload read as it arrives: the file part goes to storage a chunk at a time
(never whole in memory, never spooled to disk first), the other fields are collected.

Starlette's form parser spools every file to a temporary file before the handler runs; here
the request body is fed to python-multipart's streaming parser and the file's bytes are
handed on as the parser finds them, with their size and sha256 counted on the way.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from libs.errors import BadRequest, PayloadTooLarge

FIELD_MAX_BYTES = 64 * 1024
FILENAME_MAX = 512


class _Abort(Exception):
    """Stops the upload stream (the reason is on the upload)."""


class MultipartUpload:
    """Parse ``request``'s multipart body; :meth:`file_chunks` yields the ``file`` part."""

    def __init__(self, request: Request, max_file_bytes: int, file_field: str = "file") -> None:
        ctype, params = parse_options_header(request.headers.get("content-type"))
        if ctype != b"multipart/form-data" or not params.get(b"boundary"):
            raise BadRequest(
                "Uploads must be sent as multipart/form-data with a 'file' part",
                code="invalid_request",
            )
        self.request = request
        self.boundary = params[b"boundary"]
        self.max_file_bytes = max_file_bytes
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.content_type: str | None = None
        self.size = 0
        self.file_parts = 0
        self.sha = hashlib.sha256()
        self.error: Exception | None = None
        self._pending: deque[bytes] = deque()
        self._headers: dict[str, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._part: str | None = None  # "file", a field name, or None (ignored part)
        self._value = bytearray()

    @property
    def sha256(self) -> str:
        return self.sha.hexdigest()

    # --- parser callbacks

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._part = None
        self._value = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if name == self.file_field and filename is not None:
            self.file_parts += 1
            if self.file_parts > 1:
                self._fail(BadRequest("Send exactly one 'file' part", code="invalid_request"))
            self._part = "file"
            self.filename = filename.decode("utf-8", "replace")[-FILENAME_MAX:] or "upload"
            ctype = self._headers.get("content-type", b"").decode("latin-1").strip()
            self.content_type = ctype or None
        elif filename is None and name:
            self._part = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part == "file":
            self.size += len(chunk)
            if self.size > self.max_file_bytes:
                self._fail(
                    PayloadTooLarge(
                        f"File is larger than the {self.max_file_bytes} bytes allowed",
                        code="file_too_large",
                    )
                )
            self.sha.update(chunk)
            self._pending.append(bytes(chunk))
        elif self._part is not None:
            self._value += chunk
            if len(self._value) > FIELD_MAX_BYTES:
                self._fail(BadRequest(f"Field '{self._part}' is too long", code="invalid_request"))

    def _on_part_end(self) -> None:
        if self._part not in (None, "file"):
            self.fields[self._part] = self._value.decode("utf-8", "replace")
        self._part = None

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        raise _Abort

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file part's bytes as they arrive; reads the whole body (fields may follow)."""
        callbacks: Any = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }
        parser = MultipartParser(self.boundary, callbacks)
        try:
            async for data in self.request.stream():
                if data:
                    parser.write(data)
                while self._pending:
                    yield self._pending.popleft()
            parser.finalize()
        except _Abort:
            raise
        except (MultipartParseError, ValueError) as exc:
            self._fail(BadRequest(f"Malformed multipart body: {exc}", code="invalid_request"))
        except ClientDisconnect:
            self._fail(BadRequest("The upload was interrupted", code="upload_interrupted"))
        while self._pending:
            yield self._pending.popleft()
