"""The HTTP/1.1 protocol every app runs under: uvicorn's httptools protocol, one write per answer.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, then the body in a second write. On loopback and in containers every
write is a system call and a TCP segment, and the peer (a proxy, the gateway's pool) wakes up
twice to read one answer. Here the header block of a response with a ``Content-Length`` (a
complete JSON answer, not a stream) is held until its body is written, and both leave together.
Streams (chunked: SSE, NDJSON) are untouched: their headers go out at once, so a client sees
the stream open before the first event.

Run it with ``uvicorn --http libs.server:HttpProtocol`` (``deploy/entrypoint.py``, the local
runner and the benchmarks do).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_STATUS = b"HTTP/1.1 "
_LENGTH = b"\r\ncontent-length: "


class _HoldHeaders:
    """A response cycle's transport: holds a sized response's header block for its body."""

    __slots__ = ("_first", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif self._first:
            self._first = False
            # the cycle's first write is its header block (or an interim "100 Continue",
            # which carries no Content-Length and goes out at once)
            if data.startswith(_STATUS) and _LENGTH in data and not data.startswith(b"HTTP/1.1 1"):
                self._held = data
                return
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, set_protocol, ... of the real transport
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose sized responses leave in one write."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # the app's task starts on the next loop iteration: it only ever sees this transport.
        # HEAD: uvicorn writes no body at all, so there is nothing to join the headers to
        if (
            cycle is not None
            and not isinstance(cycle.transport, _HoldHeaders)
            and cycle.scope["method"] != "HEAD"
        ):
            cycle.transport = _HoldHeaders(self.transport)  # type: ignore[assignment]
