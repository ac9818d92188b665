"""A Responses request as one chat completion request (:func:`to_chat`), and a
``chat.completion`` back as a ``response`` object (:func:`to_response`); what a stored
response keeps of its items (:func:`input_items_of`, :func:`output_messages`)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from services.llm.chat.schemas import ChatCompletionRequest, invalid_param, translated_chat
from services.llm.responses.file_search import SearchOutcome
from services.llm.responses.schemas import NOT_FORWARDED, RESPONSES_ONLY, ResponsesRequest

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


def is_reference(item: dict[str, Any]) -> bool:
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
        kind = item.get("type") or ("item_reference" if is_reference(item) else "message")
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
        elif kind in ("reasoning", "file_search_call"):
            # no chat counterpart (encrypted_content is for OpenAI's models only): the model
            # reasons anew; a search's chunks were context for its own turn only
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


def response_hex(completion_id: str | None) -> str:
    """The hex of the response id (``resp_<hex>``) for a chat completion's id."""
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
    """The parts of a ``response`` object that echo the request, and the file_search done for
    it (its output item first, citations on the answer's text)."""

    def __init__(
        self,
        body: ResponsesRequest,
        search: SearchOutcome | None = None,
        include_results: bool = False,
    ) -> None:
        self.search = search
        self.include_results = include_results
        text = dict(body.text or {})
        text.setdefault("format", {"type": "text"})
        self.echo: dict[str, Any] = {
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
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
    if tool.get("type") == "file_search":
        return {"filters": None, "max_num_results": 20, "ranking_options": None, **tool}
    return {"strict": None, "parameters": None, "description": None, **tool}


def status_of(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    reason = _INCOMPLETE.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def to_response(completion: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """A ``chat.completion`` as a ``response`` object."""
    hexid = response_hex(completion.get("id"))
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    status, incomplete = status_of(choice.get("finish_reason"))
    item_status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    content = message.get("content")
    parts = []
    if isinstance(content, list):  # an upstream that answers in parts
        content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    if content or not message.get("tool_calls"):
        parts.append(text_part(content or ""))
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
    if shape.search is not None:
        for item in output:
            for part in item.get("content") or []:
                if part["type"] == "output_text":
                    part["annotations"] = shape.search.annotations(part["text"])
        output.insert(0, shape.search.item(shape.include_results))
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


# ---------------------------------------------------------------------------- stored items


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


def output_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
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
