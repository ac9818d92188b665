"""A chat stream an upstream has opened, forwarded to the client as OpenAI's SSE chunks, then
settled exactly once: one usage event, the response cache, the idempotency key."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from libs.sse import data_frame
from services.llm.chat.metering import MeteredCall, Metering
from services.llm.chat.metrics import LATENCY, TTFT
from services.llm.chat.repository import IdempotencyClaim, ResultStore
from services.llm.chat.stream import DONE, Assembler, IdleTimeout
from services.llm.legacy.functions import legacy_chunk
from services.llm.routing.config import Target
from services.llm.routing.dispatch import classify, close_stream
from services.llm.tokens.estimate import delivered_usage, stream_usage

log = logging.getLogger("aistack.llm")


@dataclass(slots=True)
class OpenStream:
    """An upstream's open chat stream (its first chunk read), and what relaying it needs."""

    call: MeteredCall
    target: Target  # the target that answered
    first: dict[str, Any] | None  # its first chunk (None: it ended empty)
    upstream: AsyncIterator[dict[str, Any]]  # the chunks after it
    messages: list[dict[str, Any]]  # the request as the provider got it, for estimates
    tools: list[Any] | None
    include_usage: bool  # stream_options.include_usage
    timeout_s: float  # the longest wait for the next chunk
    ttft: float  # seconds from the request until the stream opened
    cache_key: str | None  # where to cache the completion it amounts to, if anywhere
    claim: IdempotencyClaim | None
    legacy_reply: bool = False  # tool calls go back as the deprecated function_call


async def relay(
    stream: OpenStream, metering: Metering, results: ResultStore
) -> AsyncIterator[bytes]:
    """Forward upstream chunks as SSE; then usage, cache and idempotency, exactly once.

    Its first item is an empty one, never sent: the caller runs it that far before answering
    (see ``ChatService``), so that its cleanup runs even if nobody ever reads it."""
    call, target, upstream = stream.call, stream.target, stream.upstream
    messages, tools = stream.messages, stream.tools
    include_usage, legacy_reply = stream.include_usage, stream.legacy_reply
    asm = Assembler()
    finished = False
    failed = False
    base = {"id": call.id, "object": "chat.completion.chunk"}
    idle = IdleTimeout(stream.timeout_s)
    first_choice: float | None = None
    try:
        yield b""  # primed by the service (see there); never sent
        chunk = stream.first
        while chunk is not None:
            if legacy_reply:
                # tool calls back as the caller's deprecated function_call
                chunk = legacy_chunk(chunk)
            asm.add(chunk)
            if chunk.get("choices"):
                if first_choice is None:
                    first_choice = time.perf_counter() - call.started
                    TTFT.labels(target.provider, target.model).observe(first_choice)
                out = {**chunk, **base}
                if include_usage:
                    out["usage"] = None
                else:
                    out.pop("usage", None)
                yield data_frame(out)
            try:
                chunk = await idle.wait(anext(upstream))
            except StopAsyncIteration:
                chunk = None
        if include_usage:
            usage = asm.usage or stream_usage(messages, tools, asm.chars)
            yield data_frame(
                {
                    **base,
                    "created": asm.created or call.created,
                    "model": asm.model or target.model,
                    "choices": [],
                    "usage": usage,
                }
            )
        yield DONE
        finished = True
    except Exception as exc:
        failed = True
        err = classify(exc, target.provider)
        log.warning("stream from %s broke: %s", target.provider, err.message)
        # the client already has bytes: report in-band, as OpenAI does; SDKs raise on it
        yield data_frame(
            {
                "error": {
                    "message": f"Upstream stream failed: {err.message}",
                    "type": "api_error",
                    "param": None,
                    "code": err.code or "upstream_error",
                }
            }
        )
    finally:
        idle.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await close_stream(upstream)
        # neither finished nor failed: the client left (the response closed this
        # generator, or cancelled it waiting for the upstream). Billed for what it got.
        status: Literal["ok", "error", "cancelled"] = (
            "error" if failed else "ok" if finished else "cancelled"
        )
        if status == "cancelled":
            usage = delivered_usage(messages, tools, asm.chars, asm.usage)
        else:
            usage = asm.usage or stream_usage(messages, tools, asm.chars)
        LATENCY.labels(target.provider, target.model, "chat").observe(
            time.perf_counter() - call.started
        )
        metering.emit(
            call,
            metering.event(
                call,
                target=target,
                usage=usage,
                cached=False,
                status=status,
                ttft_s=first_choice if first_choice is not None else stream.ttft,
            ),
        )
        completion = asm.completion(call.id, call.created, usage) if finished else None
        if completion is not None and stream.cache_key:
            results.cache_completion(stream.cache_key, completion, target)
        results.settle(stream.claim, {"completion": completion} if completion else None)
