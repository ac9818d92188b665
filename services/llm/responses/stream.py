"""A chat completion stream as the Responses API's semantic events (:class:`EventStream`, each
event with its ``sequence_number``), ending in ``response.completed``, ``response.incomplete``
or ``response.failed`` (:func:`translate_stream`)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from libs.sse import event_frame
from services.llm.responses.translate import (
    Shape,
    response_hex,
    status_of,
    text_part,
    usage_of,
)

log = logging.getLogger("aistack.llm.responses")


class EventStream:
    """Chat completion chunks in, Responses' semantic events out (each with its
    ``sequence_number``), ending in ``response.completed`` / ``incomplete`` / ``failed``."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.seq = 0
        self.hex: str | None = None
        self.created_at = int(time.time())
        self.model: str | None = None
        self.output: list[dict[str, Any]] = []
        self.open: int | None = None  # output index of the item being streamed
        self.part: int | None = None  # content index of the message part being streamed
        self.tools: dict[int, int] = {}  # chat tool-call index -> output index
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None  # the response object once finished

    # framing

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event_frame(kind, data)

    @property
    def id(self) -> str:
        return f"resp_{self.hex}"

    def _response(self, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.shape.response(self.id, self.created_at, self.model, status, self.output, usage)

    def start(self, chunk: dict[str, Any] | None) -> list[bytes]:
        self.hex = response_hex((chunk or {}).get("id"))
        if chunk:
            self.created_at = int(chunk.get("created") or self.created_at)
            self.model = chunk.get("model") or None
        snapshot = self._response("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
            *self._file_search(),
        ]

    def _file_search(self) -> list[bytes]:
        """The file_search done before the model was called, as OpenAI streams one."""
        search = self.shape.search
        if search is None:
            return []
        item = search.item(self.shape.include_results, "in_progress")
        events = self._add({**item, "results": None})
        where = {"output_index": self.open, "item_id": item["id"]}
        for phase in ("in_progress", "searching", "completed"):
            events.append(self._event(f"response.file_search_call.{phase}", **where))
        self.output[-1] = {**item, "status": "completed"}
        events += self._close()
        return events

    # items

    def _add(self, item: dict[str, Any]) -> list[bytes]:
        self.output.append(item)
        self.open = len(self.output) - 1
        return [self._event("response.output_item.added", output_index=self.open, item=item)]

    def _open_part(self, part: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if self.open is None or self.output[self.open]["type"] != "message":
            events += self._close()
            events += self._add(
                {
                    "id": f"msg_{self.hex}_{len(self.output)}",
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
            )
        item = self.output[self.open]  # type: ignore[index]
        content: list[dict[str, Any]] = item["content"]
        if self.part is not None and content[self.part]["type"] == part["type"]:
            return events
        events += self._close_part()
        content.append(part)
        self.part = len(content) - 1
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self.open,
                content_index=self.part,
                part={**part},
            )
        )
        return events

    def _close_part(self) -> list[bytes]:
        if self.open is None or self.part is None:
            return []
        item = self.output[self.open]
        part = item["content"][self.part]
        where = {"item_id": item["id"], "output_index": self.open, "content_index": self.part}
        events: list[bytes] = []
        if part["type"] == "output_text":
            if self.shape.search is not None:
                part["annotations"] = self.shape.search.annotations(part["text"])
                for i, annotation in enumerate(part["annotations"]):
                    events.append(
                        self._event(
                            "response.output_text.annotation.added",
                            **where,
                            annotation_index=i,
                            annotation=annotation,
                        )
                    )
            done = self._event("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            done = self._event("response.refusal.done", **where, refusal=part["refusal"])
        self.part = None
        return [*events, done, self._event("response.content_part.done", **where, part=part)]

    def _close(self, status: str = "completed") -> list[bytes]:
        if self.open is None:
            return []
        index, item = self.open, self.output[self.open]
        events = self._close_part()
        if item["type"] == "function_call":
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        self.open = None
        return events

    # chunks

    def add(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        self.model = self.model or chunk.get("model") or None
        for choice in chunk.get("choices") or []:
            if int(choice.get("index") or 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._open_part(text_part(""))
                events += self._delta_text(delta["content"])
            if delta.get("refusal"):
                events += self._open_part({"type": "refusal", "refusal": ""})
                item = self.output[self.open]  # type: ignore[index]
                item["content"][self.part]["refusal"] += delta["refusal"]
                events.append(
                    self._event(
                        "response.refusal.delta",
                        item_id=item["id"],
                        output_index=self.open,
                        content_index=self.part,
                        delta=delta["refusal"],
                    )
                )
            for call in delta.get("tool_calls") or []:
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _delta_text(self, text: str) -> list[bytes]:
        item = self.output[self.open]  # type: ignore[index]
        item["content"][self.part]["text"] += text
        return [
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.open,
                content_index=self.part,
                delta=text,
                logprobs=[],
            )
        ]

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        fn = call.get("function") or {}
        index = int(call.get("index") or 0)
        at = self.tools.get(index)
        if at is None:
            events += self._close()
            events += self._add(
                {
                    "id": f"fc_{self.hex}_{len(self.output)}",
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                    "name": fn.get("name") or "",
                    "arguments": "",
                }
            )
            at = self.tools[index] = len(self.output) - 1
        item = self.output[at]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        if fn.get("arguments"):
            # a late piece of a call already closed still reaches the final response
            item["arguments"] += fn["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=at,
                    delta=fn["arguments"],
                )
            )
        return events

    def finish(self) -> list[bytes]:
        """The stream ended well: close what is open, then completed or incomplete."""
        status, incomplete = status_of(self.finish_reason)
        item_status = "incomplete" if incomplete else "completed"
        events = self._close(item_status)
        if not self.output:  # nothing said: an empty message, as a JSON answer has
            events += self._open_part(text_part(""))
            events += self._close(item_status)
        response = self._response(status, usage_of(self.usage))
        response["incomplete_details"] = incomplete
        self.final = response
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=response)]

    def fail(self, error: dict[str, Any]) -> list[bytes]:
        """The upstream broke mid-stream: an ``error`` event, then ``response.failed``."""
        code = str(error.get("code") or "upstream_error")
        message = str(error.get("message") or "The upstream stream failed")
        events = [self._event("error", code=code, message=message, param=None)]
        if self.open is not None:
            self.part = None
            self.output[self.open]["status"] = "incomplete"
            self.open = None
        response = self._response("failed", usage_of(self.usage) if self.usage else None)
        response["error"] = {"code": "server_error", "message": message}
        self.final = response
        events.append(self._event("response.failed", response=response))
        return events

    def cut(self) -> dict[str, Any]:
        """The client left before the last event: the response as far as it got (stored as
        ``incomplete``; see docs/architecture.md, "llm: the Responses API")."""
        if self.open is not None:
            self.part = None
            self.output[self.open]["status"] = "incomplete"
            self.open = None
        response = self._response("incomplete", usage_of(self.usage) if self.usage else None)
        response["incomplete_details"] = {"reason": None}
        return response


# stores a response object; an event to wait for before answering when the caller must
# (backpressure); ``wait=False``: never (a client already gone)
Store = Callable[..., asyncio.Event | None]


async def hand_over(store: Store | None, response: dict[str, Any] | None) -> None:
    """``response`` handed to ``store``, waiting for its write when told to."""
    if store is None or response is None:
        return
    done = store(response)
    if done is not None:
        await done.wait()  # cancelled (the client left): the write itself goes on


async def translate_stream(
    chunks: AsyncIterator[bytes],
    shape: Shape,
    store: Store | None = None,
) -> AsyncIterator[bytes]:
    """The chat pipeline's SSE bytes as Responses events; closing this closes ``chunks``
    (and with it the upstream call: a client that leaves cancels it). ``store`` gets the
    final response object (completed, incomplete or failed) before the last event is sent,
    or, when the client leaves after ``response.created``, the response as far as it got."""
    events = EventStream(shape)
    started = ended = False
    buffer = b""
    try:
        # read to the end, past [DONE]: the chat relay settles the call (usage, cache,
        # idempotency) only once it has run out, and counts a stream closed early as cut short
        async for piece in chunks:
            if ended:
                continue
            buffer += piece
            while b"\n\n" in buffer and not ended:
                frame, buffer = buffer.split(b"\n\n", 1)
                if not frame.startswith(b"data: "):
                    continue
                data = frame[6:]
                chunk = None if data == b"[DONE]" else orjson.loads(data)
                if not started:
                    started = True
                    for out in events.start(None if chunk is None or "error" in chunk else chunk):
                        yield out
                if chunk is None:
                    ended = True
                    finished = events.finish()
                    await hand_over(store, events.final)
                    for out in finished:
                        yield out
                elif "error" in chunk:
                    ended = True
                    failed = events.fail(chunk["error"] or {})
                    await hand_over(store, events.final)
                    for out in failed:
                        yield out
                else:
                    for out in events.add(chunk):
                        yield out
        if not ended:  # the chat stream always ends in [DONE] or an error event
            if not started:
                started = True
                for out in events.start(None):
                    yield out
            ended = True
            failed = events.fail({"message": "The stream ended early"})
            await hand_over(store, events.final)
            for out in failed:
                yield out
    finally:
        if started and not ended and store is not None:
            # the client left (this generator closed or cancelled) after seeing the id
            try:
                store(events.cut(), wait=False)
            except Exception:  # the upstream must still be closed below
                log.exception("the response %s cut short could not be stored", events.id)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
