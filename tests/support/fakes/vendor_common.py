"""What the Anthropic, Gemini and Ollama fakes share: per-test behaviour, awkward byte
splitting, broken streams, and serving an app over real TCP (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from libs.embedded import free_port


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class Reply:
    """What the fake model answers; ``stop`` is the vendor's own stop reason (None = natural)."""

    text: str = "Hello there, how can I help?"
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop: str | None = None
    prompt_tokens: int = 12
    completion_tokens: int = 7


@dataclass
class Behavior:
    """Per-test configuration of a fake vendor, plus what it received."""

    reply: Reply = field(default_factory=Reply)
    status: int | None = None  # answer with this error status and the vendor's error body
    error_message: str = "something went wrong"
    retry_after: str | None = None
    delay: float = 0.0  # seconds to wait before answering
    split: tuple[int, int] | None = None  # write the body in random slices of this size range
    break_after: int | None = None  # drop the connection after this many body bytes
    clean_eof: bool = False  # with break_after: end the body normally instead of dropping
    stall_after: int | None = None  # go silent (for a long time) after this many body bytes
    malformed: bool = False  # put a chunk that is not JSON into the stream
    pause_after_first: float = 0.0  # a stream: wait this long after its first event
    embeddings: list[list[float]] = field(default_factory=lambda: [[0.1, 0.2], [0.3, 0.4]])
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


async def wait_delay(behavior: Behavior) -> None:
    """Wait ``behavior.delay`` seconds before answering; lowering it (``Upstream.reset`` at the
    end of a test) cuts the wait short, so a request a test left hanging here answers then,
    not as a failure (a timeout, an opened circuit breaker) in whichever test comes next."""
    loop = asyncio.get_running_loop()
    limit, start = behavior.delay, loop.time()
    # polled, not an Event: reset is called from the test's thread, the fake runs in its own
    while (left := min(limit, behavior.delay) - (loop.time() - start)) > 0:  # noqa: ASYNC110
        await asyncio.sleep(min(left, 0.05))


class StreamBroken(Exception):
    """Raised inside the fake's body iterator so the server drops the connection."""


async def body_slices(payload: bytes, behavior: Behavior) -> AsyncIterator[bytes]:
    """The payload as written on the wire: split awkwardly and/or cut short."""
    if behavior.break_after is not None:
        payload = payload[: behavior.break_after]
    if behavior.split is None:
        pieces = [payload]
    else:
        rng = random.Random(len(payload))
        low, high = behavior.split
        pieces, i = [], 0
        while i < len(payload):
            n = rng.randint(low, high)
            pieces.append(payload[i : i + n])
            i += n
    sent = 0
    for piece in pieces:
        if behavior.stall_after is not None and sent + len(piece) > behavior.stall_after:
            yield piece[: behavior.stall_after - sent]
            await asyncio.sleep(30)
        yield piece
        sent += len(piece)
        await asyncio.sleep(0)
    if behavior.break_after is not None and not behavior.clean_eof:
        raise StreamBroken("connection dropped by the fake")


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free localhost port in a background thread; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


def tool_call_opening(call: dict[str, Any]) -> dict[str, Any]:
    """The first choice of a streamed tool call as OpenAI sends it: the role comes with the
    call, content null."""
    return {
        "index": 0,
        "delta": {"role": "assistant", "content": None, "tool_calls": [call]},
        "logprobs": None,
        "finish_reason": None,
    }


def assemble(chunks: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], str | None]:
    """Rebuild text, tool calls and finish reason from chunks the way OpenAI SDKs do."""
    text, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return text, [calls[i] for i in sorted(calls)], finish
