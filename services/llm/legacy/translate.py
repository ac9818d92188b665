"""``/v1/completions`` as chat: each prompt as a chat request (:func:`to_chat`), the answers
back as one ``text_completion`` (:func:`to_completion`) or one stream of its chunks
(:func:`translate_stream`, several prompts' streams interleaved as they come)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from libs.sse import data_frame
from services.llm.chat.schemas import ChatCompletionRequest, invalid_param, translated_chat
from services.llm.chat.stream import DONE
from services.llm.legacy.schemas import CompletionRequest

log = logging.getLogger("aistack.llm.completions")

MAX_PROMPTS = 128

_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


def prompts_of(body: CompletionRequest) -> list[str]:
    """The prompts as texts (400 for token ids, an empty list, too many or none)."""
    prompt = body.prompt
    if prompt is None:
        raise invalid_param("prompt is required", "prompt")
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise invalid_param("prompt must not be an empty list", "prompt")
    if not all(isinstance(p, str) for p in prompt):
        raise invalid_param(
            "Token-id prompts are not supported; send the prompt as text",
            "prompt",
            "unsupported_parameter",
        )
    if len(prompt) > MAX_PROMPTS:
        raise invalid_param(f"at most {MAX_PROMPTS} prompts per request", "prompt")
    return [str(p) for p in prompt]


def check(body: CompletionRequest) -> None:
    """400 for what would change the answer and is not supported."""
    for key in body.model_extra or {}:
        raise invalid_param(
            f"Unrecognized request argument supplied: {key}", key, "unsupported_parameter"
        )
    if body.suffix:
        raise invalid_param(
            "suffix is not supported: the prompt is answered as a chat turn, with nothing to "
            "insert into",
            "suffix",
            "unsupported_parameter",
        )
    if body.logprobs is not None:
        raise invalid_param(
            "logprobs is not supported on /v1/completions", "logprobs", "unsupported_parameter"
        )
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise invalid_param(
            f"best_of must equal n ({n}): aistack does not rank candidate completions",
            "best_of",
            "unsupported_parameter",
        )


def to_chat(body: CompletionRequest, prompt: str) -> ChatCompletionRequest:
    """The chat completion request one prompt amounts to. Streams always ask for usage (the
    sum over prompts needs each call's); whether the client sees it is decided later."""
    chat: dict[str, Any] = {"model": body.model, "messages": [{"role": "user", "content": prompt}]}
    for key in (
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "user",
        "cache",
        "timeout",
    ):
        value = getattr(body, key)
        if value is not None:
            chat[key] = value
    if body.logit_bias:
        chat["logit_bias"] = body.logit_bias
    if body.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return translated_chat(chat, "prompt")


# ---------------------------------------------------------------------------- response


def completion_id(chat_id: str | None) -> str:
    """``cmpl-<hex>`` for the chat call ``chatcmpl-<hex>`` (the usage event's request id)."""
    return "cmpl-" + (chat_id or "").removeprefix("chatcmpl-")


def finish_reason(reason: str | None) -> str | None:
    """A chat finish reason as a completion's (tool calls cannot occur: no tools are sent)."""
    if reason is None:
        return None
    return _FINISH.get(reason, "stop")


def add_usage(total: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    """``total`` plus ``usage``, every count summed (nested details too)."""
    out: dict[str, Any] = dict(total or {})
    for key, value in (usage or {}).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            prior = out.get(key)
            out[key] = (prior if isinstance(prior, int | float) else 0) + value
        elif isinstance(value, dict):
            prior = out.get(key)
            out[key] = add_usage(prior if isinstance(prior, dict) else None, value)
    return out


@dataclass(frozen=True)
class Shape:
    """What the translation back needs of the request."""

    prompts: list[str]
    n: int
    echo: bool
    include_usage: bool

    @classmethod
    def of(cls, body: CompletionRequest, prompts: list[str]) -> Shape:
        return cls(
            prompts=prompts,
            n=body.n or 1,
            echo=bool(body.echo),
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )


def to_completion(completions: list[dict[str, Any]], shape: Shape) -> dict[str, Any]:
    """The chat completions of each prompt (in prompt order) as one ``text_completion``."""
    first = completions[0]
    choices: list[dict[str, Any]] = []
    usage: dict[str, Any] = {}
    for i, chat in enumerate(completions):
        prompt = shape.prompts[i]
        for choice in chat.get("choices") or []:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            if shape.echo:
                text = prompt + text
            choices.append(
                {
                    "text": text,
                    "index": i * shape.n + int(choice.get("index") or 0),
                    "logprobs": None,
                    "finish_reason": finish_reason(choice.get("finish_reason")) or "stop",
                }
            )
        usage = add_usage(usage, chat.get("usage"))
    out: dict[str, Any] = {
        "id": completion_id(first.get("id")),
        "object": "text_completion",
        "created": first.get("created") or 0,
        "model": first.get("model") or "",
        "choices": sorted(choices, key=lambda c: c["index"]),
        "usage": usage,
    }
    if first.get("system_fingerprint"):
        out["system_fingerprint"] = first["system_fingerprint"]
    return out


class ChunkTranslator:
    """Chat chunks of each prompt's call as ``text_completion`` chunks, sharing one id."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.base: dict[str, Any] | None = None
        self.started: set[int] = set()  # choice indexes whose first text was sent (echo)
        self.usage: dict[str, Any] | None = None

    def _base(self, chunk: dict[str, Any]) -> dict[str, Any]:
        if self.base is None:
            self.base = {
                "id": completion_id(chunk.get("id")),
                "object": "text_completion",
                "created": chunk.get("created") or 0,
                "model": chunk.get("model") or "",
            }
            if chunk.get("system_fingerprint"):
                self.base["system_fingerprint"] = chunk["system_fingerprint"]
        return self.base

    def add(self, prompt_index: int, chunk: dict[str, Any]) -> bytes | None:
        """One chat chunk of prompt ``prompt_index``'s call; the SSE event for it, if any."""
        base = self._base(chunk)
        if chunk.get("usage"):
            self.usage = add_usage(self.usage, chunk["usage"])
        choices = []
        for choice in chunk.get("choices") or []:
            index = prompt_index * self.shape.n + int(choice.get("index") or 0)
            text = (choice.get("delta") or {}).get("content") or ""
            if self.shape.echo and index not in self.started:
                text = self.shape.prompts[prompt_index] + text
            finish = finish_reason(choice.get("finish_reason"))
            if not text and finish is None:
                continue  # the role chunk: OpenAI's text completions send none
            self.started.add(index)
            choices.append(
                {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            )
        if not choices:
            return None
        out = {**base, "choices": choices}
        if self.shape.include_usage:
            out["usage"] = None
        return data_frame(out)

    def final(self) -> list[bytes]:
        """The usage chunk (when asked for) and ``[DONE]``."""
        events = []
        if self.shape.include_usage and self.base is not None:
            events.append(data_frame({**self.base, "choices": [], "usage": self.usage or {}}))
        events.append(DONE)
        return events


_END = object()
# what the client is told, in-band as the chat relay does, if relaying one call's stream fails
_STREAM_FAILED = {
    "error": {
        "message": "The completion stream failed",
        "type": "api_error",
        "param": None,
        "code": "internal_error",
    }
}


async def _events(stream: AsyncIterator[bytes]) -> AsyncGenerator[dict[str, Any] | None, None]:
    """The chat pipeline's SSE bytes as chunk dicts; ``None`` for ``[DONE]``. Reads on past
    ``[DONE]`` to the stream's end: the chat relay settles the call (usage, cache,
    idempotency) only once it has run out, and counts a stream closed early as cut short."""
    buffer = b""
    async for piece in stream:
        buffer += piece
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            if frame.startswith(b"data: "):
                data = frame[6:]
                yield None if data == b"[DONE]" else orjson.loads(data)


async def aclose(stream: AsyncIterator[bytes] | None) -> None:
    """Close a stream of SSE bytes (and the chat call behind it)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def translate_stream(
    streams: list[AsyncIterator[bytes]], shape: Shape
) -> AsyncIterator[bytes]:
    """The SSE streams of each prompt's chat call as one stream of ``text_completion`` chunks
    (several prompts: interleaved as they come); an in-band error of any call is passed on
    and ends the stream. Closing this closes every call's stream (and the upstream calls)."""
    out = ChunkTranslator(shape)
    if len(streams) == 1:
        try:
            async with contextlib.aclosing(_events(streams[0])) as chunks:
                async for chunk in chunks:
                    if chunk is None:
                        continue
                    if "error" in chunk:
                        yield data_frame(chunk)
                        return
                    event = out.add(0, chunk)
                    if event is not None:
                        yield event
            for event in out.final():
                yield event
        finally:
            await aclose(streams[0])
        return

    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[bytes]) -> None:
        try:
            async with contextlib.aclosing(_events(stream)) as chunks:
                async for chunk in chunks:
                    if chunk is not None:
                        await queue.put((i, chunk))
        except Exception:  # the relay reports upstream failures in-band: not expected
            log.exception("the stream of prompt %d of a completion failed", i)
            await queue.put((i, _STREAM_FAILED))
        finally:
            await aclose(stream)
            await queue.put((i, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is _END:
                running -= 1
            elif "error" in item:
                yield data_frame(item)
                return
            else:
                event = out.add(i, item)
                if event is not None:
                    yield event
        for event in out.final():
            yield event
    finally:
        for task in tasks:
            task.cancel()
        # each pump closes its stream: a call cut short is billed for what it delivered
        await asyncio.gather(*tasks, return_exceptions=True)
