"""OpenAI's Responses API (``POST /v1/responses``) as a translation over the chat pipeline.

A Responses request becomes one chat completion request (:func:`to_chat`), served by
``LlmService.chat`` exactly as ``/v1/chat/completions`` is: routing, fallback and breakers,
TPM limits, the response cache, idempotency keys, prompts and conversations, metrics and the
one usage event per call all apply unchanged. Its answer is translated back: a
``chat.completion`` into a ``response`` object (:func:`to_response`), a stream of chunks into
Responses' semantic events (:class:`EventStream`).

Stored responses: ``store`` (default true) keeps the answer in PostgreSQL
(:mod:`services.llm.responses_store`), written off the response path once it is over;
``previous_response_id`` prepends the stored history of the named response (its inputs and
outputs, recursively; not its ``instructions``) to this turn's messages;
``GET``/``DELETE /v1/responses/{id}`` and ``GET .../input_items`` read them. What is stored:

- an answer (JSON) or a stream that ends in ``response.completed`` / ``response.incomplete``
  (``max_output_tokens``, content filter): as sent;
- a stream that breaks midway (the provider fails after the first event): as OpenAI does, the
  ``response.failed`` object, with the output produced so far (the open item ``incomplete``),
  ``error`` (``server_error``) and ``usage`` when the provider had sent it (else null);
- a stream whose client leaves before its last event: the client has seen ``response.created``
  with the id, so the response is stored, with ``status: incomplete``, the output so far (the
  open item ``incomplete``), ``incomplete_details: {"reason": null}`` (none of OpenAI's
  reasons applies) and ``usage: null`` (the usage event bills what was delivered). OpenAI
  documents only that the generation stops when the client leaves (one report has a later GET
  answer 404); keeping the partial turn lets an agent that reconnects see what was said and
  chain from it. A client that leaves before ``response.created`` has no id: nothing stored;
- a call refused or failed before its answer starts (an HTTP error, JSON or a stream not yet
  open) has no response id for the client: nothing is stored, as with OpenAI.

Writes are background tasks of the service (drained at shutdown); this process's writes in
flight are waited for by reads (``_pending``: read-your-writes). At most
``LLM_RESPONSES_MAX_PENDING_WRITES`` may be in flight per process: past it (PostgreSQL slow
or many clients) a request waits for its own write before its answer, or its stream's last
event, is sent (counted in ``aistack_llm_responses_store_waits_total``), so a slow database
slows its clients instead of growing memory, and nothing the client is told is stored is
dropped. A write that fails is logged and counted (``aistack_llm_responses_stored_total``).

Input items: messages (text and ``input_image`` by URL in user messages; ``output_text``
parts, annotations and logprobs ignored, and ``refusal`` parts in assistant history),
``function_call``, ``function_call_output`` (text), ``item_reference`` (resolved against the
organization's stored responses: the ``previous_response_id`` chain's items, then by id;
another organization's or an unknown id is a 404 ``item_not_found`` naming the item).
``reasoning`` items (with or without ``encrypted_content``) are dropped: the chat model reasons
anew. Refused with a 400 naming the item or part: ``input_file``, ``input_image`` by
``file_id``, images in assistant, system or tool output messages, and every other item type
(built-in tool calls and outputs, custom tool calls, compaction). Also not supported:
built-in tools (web_search, file_search, ...), ``background``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from prometheus_client import Counter, Gauge
from starlette.responses import Response

from libs.errors import NotFound
from libs.sse import SSEResponse
from libs.storage_errors import describe, outage_of
from services.llm.responses_schemas import NOT_FORWARDED, RESPONSES_ONLY, ResponsesRequest
from services.llm.router import (
    OpenAIRoute,
    OptionsDep,
    ServiceDep,
    UsePrincipal,
)
from services.llm.schemas import ChatCompletionRequest, invalid_param, translated_chat

if TYPE_CHECKING:
    from libs.identity import Principal
    from services.llm.service import LlmService

log = logging.getLogger("aistack.llm.responses")

PREFIX = "/v1/responses"

STORED = Counter(
    "aistack_llm_responses_stored_total",
    "Responses of /v1/responses written to the store (ok) or not (error: logged; a later "
    "previous_response_id to it is a 404)",
    ["status"],
)
STORE_WAITS = Counter(
    "aistack_llm_responses_store_waits_total",
    "Requests of /v1/responses that waited for their own store write before answering, "
    "because LLM_RESPONSES_MAX_PENDING_WRITES writes of this process were in flight",
)
PENDING_WRITES = Gauge(
    "aistack_llm_responses_pending_writes",
    "Stored responses of /v1/responses this process has still to write to PostgreSQL",
)

_ROLES = frozenset({"user", "system", "developer", "assistant"})
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


# ---------------------------------------------------------------------------- request


def _text_of(
    parts: list[Any], param: str, *, images: bool, owner: str = "user"
) -> str | list[dict[str, Any]]:
    """Content parts in chat's shape: a plain text when only text, else chat parts.
    ``owner`` names what holds them (a refused image says where images may go)."""
    out: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        where = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise invalid_param(f"{where} must be an object", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_param(f"{where}.text must be a string", f"{where}.text")
            out.append({"type": "text", "text": text})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            if not images:
                raise invalid_param(
                    f"{where}: images are only supported in user messages, not in {owner} "
                    "(the chat models behind this API take them nowhere else)",
                    f"{where}.type",
                    "unsupported_content",
                )
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise invalid_param(
                    f"{where}: give the image as image_url (a URL or a data: URL); "
                    "file_id is not supported (there is no Files API here)",
                    f"{where}.image_url",
                    "unsupported_content",
                )
            image: dict[str, Any] = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise invalid_param(
                f"{where}: file inputs (input_file) are not supported: send the file's text "
                "as input_text, or an image as input_image with image_url",
                f"{where}.type",
                "unsupported_content",
            )
        else:
            raise invalid_param(
                f"{where}: content type `{kind}` is not supported "
                "(input_text, input_image, output_text and refusal are)",
                f"{where}.type",
                "unsupported_content",
            )
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def _is_reference(item: dict[str, Any]) -> bool:
    """An ``item_reference`` (its ``type`` is optional: an object with only an ``id``)."""
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "role" not in item and "id" in item)


def item_messages(
    items: str | list[dict[str, Any]] | None, param: str = "input"
) -> list[dict[str, Any]]:
    """Input items (or a response's output items) as chat messages; item references must
    have been resolved (:func:`resolve_references`)."""
    messages: list[dict[str, Any]] = []
    if items is None:
        return messages
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    # function_call items right after an assistant message (or each other) are its tool calls
    open_assistant: dict[str, Any] | None = None
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise invalid_param(f"{where} must be an object", where)
        kind = item.get("type") or ("item_reference" if _is_reference(item) else "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise invalid_param(
                    f"{where}.role must be one of user, system, developer, assistant",
                    f"{where}.role",
                )
            content = item.get("content")
            if isinstance(content, list):
                content = _text_of(
                    content, f"{where}.content", images=role == "user", owner=f"{role} messages"
                )
            elif not isinstance(content, str):
                raise invalid_param(
                    f"{where}.content must be a string or a list of parts", f"{where}.content"
                )
            message = {"role": role, "content": content}
            messages.append(message)
            open_assistant = message if role == "assistant" else None
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise invalid_param(f"{where}.call_id is required", f"{where}.call_id")
            if not isinstance(name, str) or not name:
                raise invalid_param(f"{where}.name is required", f"{where}.name")
            arguments = item.get("arguments")
            if not isinstance(arguments, str):
                raise invalid_param(
                    f"{where}.arguments must be a JSON string", f"{where}.arguments"
                )
            if open_assistant is None:
                open_assistant = {"role": "assistant", "content": None}
                messages.append(open_assistant)
            open_assistant.setdefault("tool_calls", []).append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid_param(f"{where}.call_id is required", f"{where}.call_id")
            output = item.get("output")
            if isinstance(output, list):
                output = _text_of(
                    output, f"{where}.output", images=False, owner="function_call_output"
                )
            elif not isinstance(output, str):
                raise invalid_param(
                    f"{where}.output must be a string or a list of parts", f"{where}.output"
                )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            open_assistant = None
        elif kind == "reasoning":
            # no chat counterpart (encrypted_content is for OpenAI's models only): the model
            # reasons anew
            continue
        elif kind == "item_reference":  # resolved before; only a stored item can hold one
            raise invalid_param(
                f"{where}: an item reference cannot be resolved here", f"{where}.id"
            )
        else:
            raise invalid_param(
                f"{where}: input item type `{kind}` is not supported (message, function_call, "
                "function_call_output, item_reference and reasoning are; built-in and custom "
                "tool calls are not)",
                f"{where}.type",
                "unsupported_input",
            )
    return messages


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise invalid_param(
                f"Tool type `{kind}` is not supported: only function tools are (tools[{i}].type)",
                f"tools[{i}].type",
                "unsupported_tool_type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_param(f"tools[{i}].name is required", f"tools[{i}].name")
        fn: dict[str, Any] = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise invalid_param(
                "tool_choice must be auto, none, required or a function", "tool_choice"
            )
        return choice
    name = choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise invalid_param(
            f"tool_choice type `{choice.get('type')}` is not supported: give auto, none, "
            "required or {type: function, name}",
            "tool_choice",
            "unsupported_tool_choice",
        )
    return {"type": "function", "function": {"name": name}}


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid_param("text.format must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise invalid_param("text.format.name is required", "text.format.name")
        if not isinstance(schema, dict):
            raise invalid_param("text.format.schema must be a JSON schema", "text.format.schema")
        spec = {"name": name, "schema": schema}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return {"type": "json_schema", "json_schema": spec}
    raise invalid_param(
        f"text.format type `{kind}` is not supported (text, json_object, json_schema are)",
        "text.format.type",
    )


def to_chat(
    body: ResponsesRequest,
    history: list[dict[str, Any]] | None = None,
    turn: list[dict[str, Any]] | None = None,
) -> ChatCompletionRequest:
    """The chat completion request a Responses request amounts to (400 for what cannot be):
    ``instructions``, then ``history`` (a previous response's), then this turn's input
    (``turn``: its messages when already translated)."""
    if turn is None:
        turn = item_messages(body.input)
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    messages += history or []
    messages += turn
    extras = dict(body.model_extra or {})
    chat: dict[str, Any] = {"model": body.model, "messages": messages}
    for key, value in extras.items():
        if key in NOT_FORWARDED:
            raise invalid_param(
                f"Unsupported parameter: '{key}' is not a Responses API parameter"
                + (" (use max_output_tokens)" if "tokens" in key else ""),
                key,
                "unsupported_parameter",
            )
        if key == "conversation":
            # OpenAI's conversation parameter, for an aistack conversation's id
            conv = value.get("id") if isinstance(value, dict) else value
            chat["conversation_id"] = conv
        elif key not in RESPONSES_ONLY and value is not None:
            chat[key] = value
    if not chat["messages"] and chat.get("prompt") is None:
        raise invalid_param("input is required", "input")
    if body.tools:
        chat["tools"] = _tools(body.tools)
        if body.parallel_tool_calls is not None:
            chat["parallel_tool_calls"] = body.parallel_tool_calls
    if body.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(body.tool_choice)
    for key in ("temperature", "top_p", "user"):
        if getattr(body, key) is not None:
            chat[key] = getattr(body, key)
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    text = body.text or {}
    response_format = _response_format(text.get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    effort = (body.reasoning or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return translated_chat(chat, "input")


# ---------------------------------------------------------------------------- response


def _hex(completion_id: str | None) -> str:
    if completion_id and completion_id.startswith("chatcmpl-") and len(completion_id) > 9:
        return completion_id[9:]
    return uuid.uuid4().hex


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


class Shape:
    """The parts of a ``response`` object that echo the request."""

    def __init__(self, body: ResponsesRequest) -> None:
        text = dict(body.text or {})
        text.setdefault("format", {"type": "text"})
        self.echo: dict[str, Any] = {
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None,
            "metadata": body.metadata or {},
            "parallel_tool_calls": (
                True if body.parallel_tool_calls is None else body.parallel_tool_calls
            ),
            "previous_response_id": body.previous_response_id,
            "reasoning": {
                "effort": (body.reasoning or {}).get("effort"),
                "summary": (body.reasoning or {}).get("summary"),
            },
            "store": body.store is not False,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": text,
            "tool_choice": "auto" if body.tool_choice is None else body.tool_choice,
            "tools": [_echo_tool(t) for t in body.tools or []],
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": "disabled",
            "user": body.user,
        }
        self.model = body.model

    def response(
        self,
        response_id: str,
        created_at: int,
        model: str | None,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "model": model or self.model,
            "output": output,
            **self.echo,
            "usage": usage,
        }
        if status == "completed":
            out["completed_at"] = int(time.time())
        return out


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {"strict": None, "parameters": None, "description": None, **tool}


def _status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    reason = _INCOMPLETE.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def to_response(completion: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """A ``chat.completion`` as a ``response`` object."""
    hexid = _hex(completion.get("id"))
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    item_status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    content = message.get("content")
    parts = []
    if isinstance(content, list):  # an upstream that answers in parts
        content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    if content or not message.get("tool_calls"):
        parts.append(_text_part(content or ""))
    if message.get("refusal"):
        parts = [p for p in parts if p["text"]]
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        output.append(
            {
                "id": f"msg_{hexid}_0",
                "type": "message",
                "status": item_status,
                "role": "assistant",
                "content": parts,
            }
        )
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append(
            {
                "id": f"fc_{hexid}_{len(output)}",
                "type": "function_call",
                "status": item_status,
                "call_id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "name": fn.get("name") or "",
                "arguments": fn.get("arguments") or "",
            }
        )
    out = shape.response(
        f"resp_{hexid}",
        int(completion.get("created") or time.time()),
        completion.get("model"),
        status,
        output,
        usage_of(completion.get("usage")),
    )
    out["incomplete_details"] = incomplete
    return out


# ---------------------------------------------------------------------------- streaming


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
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    @property
    def id(self) -> str:
        return f"resp_{self.hex}"

    def _response(self, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.shape.response(self.id, self.created_at, self.model, status, self.output, usage)

    def start(self, chunk: dict[str, Any] | None) -> list[bytes]:
        self.hex = _hex((chunk or {}).get("id"))
        if chunk:
            self.created_at = int(chunk.get("created") or self.created_at)
            self.model = chunk.get("model") or None
        snapshot = self._response("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

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
        if part["type"] == "output_text":
            done = self._event("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            done = self._event("response.refusal.done", **where, refusal=part["refusal"])
        self.part = None
        return [done, self._event("response.content_part.done", **where, part=part)]

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
                events += self._open_part(_text_part(""))
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
        status, incomplete = _status(self.finish_reason)
        item_status = "incomplete" if incomplete else "completed"
        events = self._close(item_status)
        if not self.output:  # nothing said: an empty message, as a JSON answer has
            events += self._open_part(_text_part(""))
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
        ``incomplete``; see the module's docstring)."""
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


async def _stored(store: Store | None, response: dict[str, Any] | None) -> None:
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
                    await _stored(store, events.final)
                    for out in finished:
                        yield out
                elif "error" in chunk:
                    ended = True
                    failed = events.fail(chunk["error"] or {})
                    await _stored(store, events.final)
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
            await _stored(store, events.final)
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


# ---------------------------------------------------------------------------- storage

# well-formed response ids (ours): only these are worth waiting for
_RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")
# another llm process may still be writing a response its client has already chained to
_CHAIN_RETRIES_S = (0.05, 0.1, 0.2)
# writes of this process not yet committed, by response id (read-your-writes)
_pending: dict[str, asyncio.Event] = {}


def _not_found(response_id: str, param: str | None = None) -> NotFound:
    message = f"{'Previous response' if param else 'Response'} with id '{response_id}' not found."
    details = [{"field": param, "message": message}] if param else None
    return NotFound(message, code="response_not_found", details=details)


def input_items_of(items: str | list[dict[str, Any]] | None, hexid: str) -> list[dict[str, Any]]:
    """This turn's input in the shape ``GET .../input_items`` lists: items with ids, message
    contents as parts (reasoning items were dropped, so they are not listed)."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(items):
        item = {k: v for k, v in raw.items() if v is not None}
        kind = item.setdefault("type", "message")
        if kind == "reasoning":
            continue
        if kind == "message":
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": part, "text": content}]
            parts = []
            for p in content or []:
                p = dict(p)
                if p.get("type") == "text":
                    p["type"] = part
                if p.get("type") == "output_text":
                    p.setdefault("annotations", [])
                if p.get("type") == "input_image":
                    p.setdefault("detail", "auto")
                parts.append(p)
            item["content"] = parts
            prefix = "msg"
        else:
            prefix = {"function_call": "fc", "function_call_output": "fco"}.get(kind, "item")
        item.setdefault("id", f"{prefix}_{hexid}_in{i}")
        item.setdefault("status", "completed")
        out.append(item)
    return out


def _output_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's output as chat history. A function call the model did not finish (status
    ``incomplete``: cut by max_output_tokens, a failed stream or a client gone) is left out:
    its arguments are cut short, nothing could have run it, and a provider refuses a tool
    call with no tool result after it."""
    output = [
        item
        for item in response.get("output") or []
        if item.get("type") != "function_call"
        or (item.get("name") and item.get("status") != "incomplete")
    ]
    return item_messages(output, "output")


def _store_later(
    service: LlmService,
    principal: Principal,
    items: str | list[dict[str, Any]] | None,
    history: list[dict[str, Any]],
    turn: list[dict[str, Any]],
    response: dict[str, Any],
    *,
    wait: bool = True,
) -> asyncio.Event | None:
    """Write ``response`` (this turn's input ``items``) off the response path, in a task the
    service drains at shutdown. The write's event when the caller must wait for it before
    answering: ``LLM_RESPONSES_MAX_PENDING_WRITES`` writes are already in flight (and
    ``wait``; a client already gone is not waited for)."""
    sessions = service.sessions()
    response_id = response["id"]
    if sessions is None:
        STORED.labels("error").inc()
        log.warning("response %s not stored: the llm service has no database", response_id)
        return None
    crowded = len(_pending) >= service.settings.responses_max_pending_writes
    done = _pending[response_id] = asyncio.Event()
    PENDING_WRITES.set(len(_pending))
    org_id = principal.require_org()
    ttl_days = service.settings.responses_ttl_days

    async def write() -> None:
        try:
            # SQLAlchemy and the models load with the first stored response
            from services.llm import responses_store

            await responses_store.save(
                sessions,
                response=response,
                org_id=org_id,
                user_id=principal.user_id,
                key_id=principal.key_id,
                input_items=input_items_of(items, response_id.removeprefix("resp_")),
                history=[*history, *turn, *_output_messages(response)],
                ttl_days=ttl_days,
            )
            STORED.labels("ok").inc()
        except Exception as exc:
            STORED.labels("error").inc()
            if outage_of(exc) is not None:  # down, or hung past DB_COMMAND_TIMEOUT_SECONDS
                log.warning(
                    "response %s could not be stored: database unavailable (%s)",
                    response_id,
                    describe(exc),
                )
            else:
                log.exception("response %s could not be stored", response_id)
        finally:
            done.set()
            if _pending.get(response_id) is done:
                del _pending[response_id]
            PENDING_WRITES.set(len(_pending))

    service.spawn(write())
    if crowded and wait:
        STORE_WAITS.inc()
        return done
    return None


async def _own_write(response_id: str) -> None:
    """Wait (at most 10 s) for this process's write of ``response_id`` if one is in flight
    (read-your-writes)."""
    pending = _pending.get(response_id)
    if pending is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pending.wait(), timeout=10)


async def _find(
    service: LlmService, org_id: uuid.UUID, response_id: str, *, chained: bool = False
) -> Any:
    """The stored row (``StoredResponse``), or None. A response this process is still
    writing is waited for; when ``chained`` (previous_response_id), one another process
    may be writing is looked up again a few times before it is called unknown."""
    sessions = service.sessions()
    if sessions is None or len(response_id) > 80:
        return None
    from services.llm import responses_store

    await _own_write(response_id)
    row = await responses_store.load(sessions, org_id, response_id)
    if row is None and chained and _RESPONSE_ID.fullmatch(response_id):
        for delay in _CHAIN_RETRIES_S:
            await asyncio.sleep(delay)
            row = await responses_store.load(sessions, org_id, response_id)
            if row is not None:
                break
    return row


# item ids aistack gives (output items: msg_/fc_<hex>_<n>; input items: <prefix>_<hex>_in<n>)
# name their response: resp_<hex>
_ITEM_ID = re.compile(r"(?:msg|fc|fco|item)_([0-9a-f]{32})_(?:in)?[0-9]+")


def _item_not_found(item_id: str, param: str) -> NotFound:
    message = f"Item with id '{item_id}' not found."
    return NotFound(message, code="item_not_found", details=[{"field": param, "message": message}])


async def resolve_references(
    service: LlmService,
    org_id: uuid.UUID,
    items: str | list[dict[str, Any]] | None,
    previous: Any = None,
) -> str | list[dict[str, Any]] | None:
    """``items`` with each ``item_reference`` replaced by the item it names: one of the
    ``previous`` response's (its output, then its input items), else one of the
    organization's stored responses (:func:`responses_store.find_items`). Another
    organization's, an expired or an unknown id: 404 ``item_not_found`` naming the item."""
    if not isinstance(items, list):
        return items
    refs: dict[int, str] = {}
    for i, item in enumerate(items):
        if isinstance(item, dict) and _is_reference(item):
            item_id = item.get("id")
            if not isinstance(item_id, str) or not item_id or len(item_id) > 200:
                raise invalid_param(
                    f"input[{i}].id must be the id of a stored item", f"input[{i}].id"
                )
            refs[i] = item_id
    if not refs:
        return items
    known: dict[str, dict[str, Any]] = {}
    if previous is not None:
        for item in [*(previous.response.get("output") or []), *previous.input_items]:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                known.setdefault(item["id"], item)
    missing = list(dict.fromkeys(v for v in refs.values() if v not in known))
    sessions = service.sessions()
    if missing and sessions is not None:
        from services.llm import responses_store

        owners = {
            item_id: f"resp_{m.group(1)}"
            for item_id in missing
            if (m := _ITEM_ID.fullmatch(item_id)) is not None
        }
        # responses this process is still writing are waited for (read-your-writes)
        for response_id in set(owners.values()):
            await _own_write(response_id)
        known.update(await responses_store.find_items(sessions, org_id, missing, owners))
        # one another process may still be writing (named by its id): looked up again briefly
        late = {k: v for k, v in owners.items() if k not in known}
        for delay in _CHAIN_RETRIES_S if late else ():
            await asyncio.sleep(delay)
            known.update(await responses_store.find_items(sessions, org_id, list(late), late))
            late = {k: v for k, v in late.items() if k not in known}
            if not late:
                break
    out = list(items)
    for i, item_id in refs.items():
        if item_id not in known:
            raise _item_not_found(item_id, f"input[{i}].id")
        out[i] = known[item_id]
    return out


# ---------------------------------------------------------------------------- routes

router = APIRouter(tags=["llm"], route_class=OpenAIRoute)


@router.post(
    PREFIX,
    summary="Create a model response (OpenAI's Responses API; SSE when stream=true)",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def create_response(
    body: ResponsesRequest,
    principal: UsePrincipal,
    service: ServiceDep,
    options: OptionsDep,
) -> Response:
    org_id = principal.require_org()
    history: list[dict[str, Any]] = []
    previous = None
    if body.previous_response_id is not None:
        previous = await _find(service, org_id, body.previous_response_id, chained=True)
        if previous is None:
            raise _not_found(body.previous_response_id, "previous_response_id")
        history = list(previous.history)
    items = await resolve_references(service, org_id, body.input, previous)
    turn = item_messages(items)
    chat = to_chat(body, history, turn)
    shape = Shape(body)
    result = await service.chat(principal, chat, options)

    store: Store | None = None
    if body.store is not False:

        def store(response: dict[str, Any], wait: bool = True) -> asyncio.Event | None:
            return _store_later(service, principal, items, history, turn, response, wait=wait)

    if result.stream is not None:
        return SSEResponse(translate_stream(result.stream, shape, store), headers=result.headers)
    assert result.body is not None
    response = to_response(result.body, shape)
    await _stored(store, response)
    return Response(orjson.dumps(response), media_type="application/json", headers=result.headers)


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.get(
    f"{PREFIX}/{{response_id}}",
    summary="Retrieve a stored response (one of your organization's, not expired)",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}},
)
async def get_response(response_id: str, principal: UsePrincipal, service: ServiceDep) -> Response:
    row = await _find(service, principal.require_org(), response_id)
    if row is None:
        raise _not_found(response_id)
    return _json(row.response)


@router.delete(
    f"{PREFIX}/{{response_id}}",
    summary="Delete a stored response",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}},
)
async def delete_response(
    response_id: str, principal: UsePrincipal, service: ServiceDep
) -> Response:
    org_id = principal.require_org()
    # a response still being written is waited for, so it is deleted rather than left
    if await _find(service, org_id, response_id) is None:
        raise _not_found(response_id)
    from services.llm import responses_store

    if not await responses_store.remove(service.sessions(), org_id, response_id):
        raise _not_found(response_id)
    return _json({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get(
    f"{PREFIX}/{{response_id}}/input_items",
    summary="List the input items of a stored response (this turn's, as sent)",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}},
)
async def list_input_items(
    response_id: str,
    principal: UsePrincipal,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    row = await _find(service, principal.require_org(), response_id)
    if row is None:
        raise _not_found(response_id)
    items: list[dict[str, Any]] = list(row.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
        if at is None:
            raise invalid_param(f"No input item with id '{after}' in this response", "after")
        items = items[at + 1 :]
    page = items[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
