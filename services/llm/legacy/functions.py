"""OpenAI's deprecated ``functions`` / ``function_call`` chat parameters, over ``tools``.

Older clients (LangChain's OpenAI-functions agents, apps written before tools) still send
``functions`` and ``function_call``, history with an assistant ``function_call`` and
``role: "function"`` results, and read ``message.function_call`` / ``delta.function_call``
and ``finish_reason: "function_call"`` back. OpenAI still answers them.

Only the OpenAI and Azure adapters (:class:`OpenAIProvider`) get such a request as sent: the
vendor understands it and answers in the legacy shape itself. Every other provider gets it
as ``tools`` / ``tool_choice`` and tool-call history (:class:`LegacyPlan`), and its answer is
turned back into the legacy shape (:func:`legacy_completion`, :func:`legacy_chunk`) before
the client, the response cache and the idempotency store see it, so a replay is the legacy
shape too. Nothing of the legacy parameters is ignored silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from services.llm.chat.schemas import ChatCompletionRequest, invalid_param
from services.llm.providers.base import Provider


def speaks_legacy(provider: Provider) -> bool:
    """Whether ``provider`` gets the legacy parameters as sent: OpenAI and Azure OpenAI (the
    same adapter) understand them; the others get them translated."""
    # imported here: the service does not load the HTTP adapters until they are configured
    from services.llm.providers.openai import OpenAIProvider

    return isinstance(provider, OpenAIProvider)


@dataclass(frozen=True)
class LegacyPlan:
    """The request as ``tools`` for providers that do not speak the legacy parameters."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]
    tools: list[dict[str, Any]] | None
    # the caller sent ``functions``: answers go back as ``function_call``
    legacy_reply: bool


def _uses_legacy_history(body: ChatCompletionRequest) -> bool:
    for m in body.messages:
        if m.role == "function" or (m.model_extra and "function_call" in m.model_extra):
            return True
    return False


def plan(body: ChatCompletionRequest) -> LegacyPlan | None:
    """None for a request without legacy parameters or history (the usual case); a 400 in
    OpenAI's shape for one that mixes them with ``tools`` or sends them malformed."""
    functions, function_call = body.functions, body.function_call
    if functions is None and function_call is None and not _uses_legacy_history(body):
        return None
    if functions is not None and body.tools is not None:
        raise invalid_param(
            "Invalid request: 'functions' and 'tools' cannot both be provided; "
            "use 'tools' ('functions' is deprecated)",
            "functions",
        )
    if function_call is not None:
        if body.tool_choice is not None:
            raise invalid_param(
                "Invalid request: 'function_call' and 'tool_choice' cannot both be provided; "
                "use 'tool_choice' ('function_call' is deprecated)",
                "function_call",
            )
        if functions is None:
            raise invalid_param(
                "Invalid request: 'function_call' is only allowed when 'functions' are given",
                "function_call",
            )
    params = body.params()
    params.pop("functions", None)
    params.pop("function_call", None)
    tools = body.tools
    if functions is not None:
        for i, f in enumerate(functions):
            if not isinstance(f.get("name"), str) or not f["name"]:
                raise invalid_param(
                    f"Invalid request: functions.{i}.name: a function needs a name",
                    f"functions.{i}.name",
                )
        tools = [{"type": "function", "function": f} for f in functions]
        params["tools"] = tools
    if function_call is not None:
        params["tool_choice"] = _tool_choice(function_call)
    return LegacyPlan(_messages(body.messages_json()), params, tools, functions is not None)


def _tool_choice(function_call: str | dict[str, Any]) -> str | dict[str, Any]:
    if function_call in ("none", "auto"):
        return function_call
    if isinstance(function_call, dict) and isinstance(function_call.get("name"), str):
        return {"type": "function", "function": {"name": function_call["name"]}}
    raise invalid_param(
        "Invalid request: function_call must be 'none', 'auto' or {\"name\": ...}",
        "function_call",
    )


def call_id(index: int, name: str, arguments: str) -> str:
    """A tool call id for the legacy call of message ``index``: the same history always gets
    the same ids (cache keys and vendors' prompt caches stay stable)."""
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant ``function_call`` -> ``tool_calls``; ``role: "function"`` -> ``role: "tool"``
    answering the latest unanswered call (of that name, if there is one)."""
    out: list[dict[str, Any]] = []
    open_calls: list[tuple[str, str]] = []  # (id, name) awaiting their result
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant" and message.get("function_call") is not None:
            message = dict(message)
            fc = message.pop("function_call")
            if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
                raise invalid_param(
                    f"Invalid request: messages.{i}.function_call needs a name",
                    f"messages.{i}.function_call",
                )
            name, arguments = fc["name"], fc.get("arguments")
            arguments = arguments if isinstance(arguments, str) else "{}"
            ident = call_id(i, name, arguments)
            message["tool_calls"] = [
                *(message.get("tool_calls") or []),
                {
                    "id": ident,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                },
            ]
            open_calls = [(ident, name)]
            out.append(message)
        elif role == "function":
            name = message.get("name")
            match = next((c for c in open_calls if c[1] == name), None)
            match = match or (open_calls[0] if open_calls else None)
            if match is None:
                raise invalid_param(
                    f"Invalid request: messages.{i}: a 'function' message must follow an "
                    "assistant message with a function_call",
                    f"messages.{i}",
                )
            open_calls.remove(match)
            content = message.get("content")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": match[0],
                    "content": "" if content is None else content,
                }
            )
        else:
            if role != "tool":
                open_calls = []
            out.append(message)
    return out


def _function_call(tool_call: dict[str, Any]) -> dict[str, Any]:
    fn = tool_call.get("function") or {}
    return {"name": fn.get("name") or "", "arguments": fn.get("arguments") or ""}


def legacy_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` in the legacy shape: the first tool call as ``function_call``."""
    choices = []
    for choice in completion.get("choices") or []:
        message = dict(choice.get("message") or {})
        calls = message.pop("tool_calls", None)
        if calls:
            message["function_call"] = _function_call(calls[0])
        choice = {**choice, "message": message}
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "function_call"
        choices.append(choice)
    return {**completion, "choices": choices}


def legacy_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion.chunk`` in the legacy shape: ``delta.tool_calls[0]`` as
    ``delta.function_call`` (name in its first chunk, then argument fragments)."""
    choices = chunk.get("choices")
    if not choices:
        return chunk
    out = []
    for choice in choices:
        delta = choice.get("delta")
        if delta and "tool_calls" in delta:
            delta = dict(delta)
            calls = delta.pop("tool_calls") or []
            first = next((c for c in calls if int(c.get("index", 0)) == 0), None)
            if first is not None:
                fn = first.get("function") or {}
                delta["function_call"] = {
                    k: fn[k] for k in ("name", "arguments") if fn.get(k) is not None
                }
            choice = {**choice, "delta": delta}
        if choice.get("finish_reason") == "tool_calls":
            choice = {**choice, "finish_reason": "function_call"}
        out.append(choice)
    return {**chunk, "choices": out}
