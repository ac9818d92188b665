"""Server-sent events: one response class and one framing for every service's streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any

import anyio
import orjson
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

# what every SSE answer carries: not cached, and not buffered by a proxy (nginx) on its way
UNBUFFERED = {"cache-control": "no-cache", "x-accel-buffering": "no"}

# one event of a stream, as OpenAPI 3.2 describes it (the media type's ``itemSchema``)
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


def sse_responses(
    description: str = "A stream of server-sent events",
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses`` for an event stream: each event described by its
    ``itemSchema`` (:data:`EVENT_SCHEMA`)."""
    return {
        200: {
            "description": description,
            "content": {"text/event-stream": {"itemSchema": EVENT_SCHEMA}},
        }
    }


def describe_streams_per_event(document: dict[str, Any]) -> None:
    """Where an event stream names its ``itemSchema``, drop the stream-level ``schema``
    (``{"type": "string"}``) FastAPI adds for a streaming response class: under OpenAPI 3.2
    it would describe the whole stream, which is not a string."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                stream = response.get("content", {}).get("text/event-stream")
                if isinstance(stream, dict) and "itemSchema" in stream:
                    stream.pop("schema", None)


def data_frame(data: Any) -> bytes:
    """One event of data only (``data: <json>``), as OpenAI frames its streams."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def event_frame(event: str, data: Any) -> bytes:
    """One named event (``event: <name>`` then ``data: <json>``)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class SSEResponse(StreamingResponse):
    """An SSE stream that notices a client going away even while its source is silent, and
    always closes its body iterator, so a disconnect mid-stream cancels what feeds it (an
    upstream request, a polling loop).

    (Starlette's own StreamingResponse only learns of a disconnect from a failed write under
    ASGI 2.4, which never comes while the source is between events.) ``headers`` come after
    :data:`UNBUFFERED`, each event is sent as it is yielded.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterable[bytes] | Iterable[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        merged = {**UNBUFFERED, **headers} if headers else UNBUFFERED
        super().__init__(content, status_code, merged, background=background)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-write
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await aclose()
