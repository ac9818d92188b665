"""OpenAI chunk plumbing: assembling a stream into its ``chat.completion``, replaying a stored one
as chunks, and the idle timeout between chunks (SSE framing: :mod:`libs.sse`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"  # OpenAI's last event of a stream


class Assembler:
    """Rebuilds the ``chat.completion`` a stream amounts to (for the cache and idempotency)."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.chars = 0

    def add(self, chunk: dict[str, Any]) -> None:
        self.model = self.model or chunk.get("model")
        self.created = self.created or chunk.get("created")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            idx = int(choice.get("index", 0))
            slot = self.choices.setdefault(
                idx,
                {"content": None, "role": "assistant", "tool_calls": {}, "finish_reason": None},
            )
            delta = choice.get("delta") or {}
            if delta.get("role"):
                slot["role"] = delta["role"]
            if delta.get("content"):
                slot["content"] = (slot["content"] or "") + delta["content"]
                self.chars += len(delta["content"])
            for call in delta.get("tool_calls") or []:
                calls: dict[int, dict[str, Any]] = slot["tool_calls"]
                entry = calls.setdefault(
                    int(call.get("index", len(calls))),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    entry["id"] = call["id"]
                fn = call.get("function") or {}
                entry["function"]["name"] += fn.get("name") or ""
                entry["function"]["arguments"] += fn.get("arguments") or ""
                self.chars += len(fn.get("arguments") or "")
                for key, value in call.items():
                    if key not in ("index", "id", "type", "function"):
                        entry[key] = value
            legacy = delta.get("function_call")
            if legacy:  # the deprecated function_call (services/llm/legacy/functions.py)
                fc = slot.setdefault("function_call", {"name": "", "arguments": ""})
                fc["name"] += legacy.get("name") or ""
                fc["arguments"] += legacy.get("arguments") or ""
                self.chars += len(legacy.get("arguments") or "")
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]

    def completion(self, completion_id: str, created: int, usage: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for idx in sorted(self.choices):
            slot = self.choices[idx]
            message: dict[str, Any] = {"role": slot["role"], "content": slot["content"]}
            if slot["tool_calls"]:
                message["tool_calls"] = [slot["tool_calls"][i] for i in sorted(slot["tool_calls"])]
            if slot.get("function_call"):
                message["function_call"] = slot["function_call"]
            choices.append(
                {
                    "index": idx,
                    "message": message,
                    "finish_reason": slot["finish_reason"] or "stop",
                    "logprobs": None,
                }
            )
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": self.created or created,
            "model": self.model or "",
            "choices": choices,
            "usage": usage,
        }
        if self.system_fingerprint:
            out["system_fingerprint"] = self.system_fingerprint
        return out


def replay_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A stored ``chat.completion`` as the chunks a stream of it would have sent."""
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    extra = {"usage": None} if include_usage else {}
    chunks: list[dict[str, Any]] = []
    for choice in completion.get("choices") or []:
        idx = choice.get("index", 0)
        message = choice.get("message") or {}

        def one(delta: dict[str, Any], finish: str | None = None, i: int = idx) -> dict[str, Any]:
            return {
                **base,
                "choices": [
                    {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
                **extra,
            }

        role = message.get("role", "assistant")
        calls = [{"index": i, **call} for i, call in enumerate(message.get("tool_calls") or [])]
        function_call = message.get("function_call")  # the deprecated form of a tool call
        if calls and not message.get("content"):
            # as OpenAI streams a tool call: the role comes with it, content null, no text part
            chunks.append(one({"role": role, "content": None, "tool_calls": calls[:1]}))
            calls = calls[1:]
        elif function_call and not message.get("content"):
            chunks.append(one({"role": role, "content": None, "function_call": function_call}))
            function_call = None
        else:
            chunks.append(one({"role": role, "content": ""}))
            if message.get("content"):
                chunks.append(one({"content": message["content"]}))
        for call in calls:
            chunks.append(one({"tool_calls": [call]}))
        if function_call:
            chunks.append(one({"function_call": function_call}))
        chunks.append(one({}, choice.get("finish_reason") or "stop"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion.get("usage")})
    return chunks


class IdleTimeout:
    """The longest wait for the next chunk of a stream, enforced by one timer per stream.

    ``asyncio.timeout`` around each chunk creates and cancels a timer per chunk, a visible
    share of relaying a stream. Here :meth:`wait` runs the awaitable with a deadline that only
    moves forward; the timer fires rarely (once per ``seconds`` at most) and, when the deadline
    has passed while waiting, cancels the waiting task, which :meth:`wait` turns into
    ``TimeoutError``, as ``asyncio.timeout`` does.
    """

    __slots__ = ("_deadline", "_fired", "_handle", "_task", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._fired = False

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; ``TimeoutError`` if it takes longer than ``seconds``."""
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._deadline = loop.time() + self.seconds
        if self._handle is None:
            self._handle = loop.call_at(self._deadline, self._check)
        try:
            return await awaitable
        except asyncio.CancelledError:
            task = self._task
            if self._fired and task is not None and task.uncancel() == 0:
                self._fired = False
                raise TimeoutError from None
            raise
        finally:
            self._deadline = None

    def _check(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None or self._task is None:
            return  # not waiting now: the next wait() sets a timer again
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self._fired = True
            self._task.cancel()
        else:
            self._handle = loop.call_at(deadline, self._check)

    def close(self) -> None:
        """Drop the timer (the stream is over)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
