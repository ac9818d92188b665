"""OpenAI chunk plumbing: SSE framing, usage-chunk placement, assembling and replaying streams."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event exactly as OpenAI frames it."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


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
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]

    def completion(self, completion_id: str, created: int, usage: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for idx in sorted(self.choices):
            slot = self.choices[idx]
            message: dict[str, Any] = {"role": slot["role"], "content": slot["content"]}
            if slot["tool_calls"]:
                message["tool_calls"] = [slot["tool_calls"][i] for i in sorted(slot["tool_calls"])]
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

        chunks.append(one({"role": message.get("role", "assistant"), "content": ""}))
        if message.get("content"):
            chunks.append(one({"content": message["content"]}))
        for i, call in enumerate(message.get("tool_calls") or []):
            chunks.append(one({"tool_calls": [{"index": i, **call}]}))
        chunks.append(one({}, choice.get("finish_reason") or "stop"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion.get("usage")})
    return chunks
