"""OpenAI ⇄ vendor translation helpers (Anthropic, Gemini, Ollama and local adapters)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from services.llm.providers.base import ProviderError

# Vendor stop reasons → OpenAI finish_reason. Unknown reasons fall back to "stop".
ANTHROPIC_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
GEMINI_FINISH: dict[str, str] = {
    "STOP": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "OTHER": "stop",
}
OLLAMA_FINISH: dict[str, str] = {
    "stop": "stop",
    "length": "length",
    "load": "stop",
    "unload": "stop",
}

JSON_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose, no code fences."
)


def finish_reason(table: Mapping[str, str], reason: str | None, has_tool_calls: bool) -> str:
    """Map a vendor stop reason; a natural stop with tool calls is ``tool_calls``."""
    mapped = table.get(reason or "", "stop")
    if mapped == "stop" and has_tool_calls:
        return "tool_calls"
    return mapped


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def tool_call_id() -> str:
    """A synthetic tool call id for vendors that have none (Gemini, Ollama)."""
    return new_id("call_")


def text_of(content: Any) -> str:
    """The text of an OpenAI message content (string, None or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        )
    return str(content)


def content_parts(content: Any) -> list[dict[str, Any]]:
    """Content normalised to a list of OpenAI parts (``text`` / ``image_url``)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    return [{"type": "text", "text": str(content)}]


def image_url(part: Mapping[str, Any]) -> str:
    value = part.get("image_url")
    if isinstance(value, dict):
        return str(value.get("url", ""))
    return str(value or "")


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<mime>;base64,<data>`` → (mime, data); None for other URLs."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise invalid("image data URLs must be base64 encoded")
    return header[: -len(";base64")] or "application/octet-stream", data


def normalize_stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [str(s) for s in stop]


def invalid(message: str) -> ProviderError:
    """A request this vendor cannot express (client error, not retryable)."""
    return ProviderError(message, status=400, code="invalid_request")


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI tool call ``arguments`` (a JSON string) → object, as vendors want objects."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        raise invalid("tool call arguments must be a JSON object") from None
    if not isinstance(value, dict):
        raise invalid("tool call arguments must be a JSON object")
    return value


def dump_arguments(arguments: Any) -> str:
    """Vendor tool arguments (an object) → OpenAI's JSON string."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def functions(tools: Any) -> list[dict[str, Any]]:
    """OpenAI ``tools`` → plain ``{name, description, parameters}`` function definitions."""
    out: list[dict[str, Any]] = []
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise invalid("only function tools are supported")
        fn = tool.get("function") or {}
        if not fn.get("name"):
            raise invalid("a function tool needs a name")
        out.append(
            {
                "name": fn["name"],
                "description": fn.get("description") or "",
                "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return out


def tool_choice(value: Any) -> tuple[str, str | None]:
    """OpenAI ``tool_choice`` → (mode, function name); mode is auto | none | required | function."""
    if value is None or value == "auto":
        return "auto", None
    if value in ("none", "required"):
        return str(value), None
    if isinstance(value, dict):
        name = (value.get("function") or {}).get("name")
        if value.get("type") == "function" and name:
            return "function", str(name)
    raise invalid(f"unsupported tool_choice: {value!r}")


def json_mode(params: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None] | None:
    """``response_format`` → None | ("json_object", None) | ("json_schema", schema)."""
    fmt = params.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return "json_schema", schema if isinstance(schema, dict) else None
    return None


def json_instruction(mode: tuple[str, dict[str, Any] | None]) -> str:
    """A system instruction emulating JSON mode for vendors without a native switch."""
    _, schema = mode
    if schema is None:
        return JSON_INSTRUCTION
    return f"{JSON_INSTRUCTION} It must conform to this JSON Schema: {json.dumps(schema)}"


def tool_names_by_id(messages: list[dict[str, Any]]) -> dict[str, str]:
    """Function names of the assistant tool calls seen so far, by tool call id."""
    names: dict[str, str] = {}
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id") and fn.get("name"):
                    names[str(call["id"])] = str(fn["name"])
    return names


def usage(prompt: int | None, completion: int | None) -> dict[str, int]:
    p, c = int(prompt or 0), int(completion or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(
    *,
    id: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int],
    created: int | None = None,
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` dict."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def choice(index: int, text: str, tool_calls: list[dict[str, Any]], finish: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    elif not text:
        message["content"] = ""
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def tool_call(id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": dump_arguments(arguments)},
    }


ROLE_DELTA: dict[str, Any] = {"role": "assistant", "content": ""}


class ChunkMaker:
    """Builds ``chat.completion.chunk`` dicts sharing one id, model and created time."""

    def __init__(self, id: str, model: str) -> None:
        self.id = id
        self.model = model
        self.created = int(time.time())

    def chunk(
        self,
        delta: dict[str, Any] | None = None,
        *,
        finish: str | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
            ],
        }

    def role(self, index: int = 0) -> dict[str, Any]:
        """The opening chunk of a choice; see :func:`role_with_first_content`."""
        return self.chunk(dict(ROLE_DELTA), index=index)

    def text(self, text: str, index: int = 0) -> dict[str, Any]:
        return self.chunk({"content": text}, index=index)

    def tool_start(
        self, tool_index: int, id: str, name: str, arguments: str = "", index: int = 0
    ) -> dict[str, Any]:
        call = {
            "index": tool_index,
            "id": id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return self.chunk({"tool_calls": [call]}, index=index)

    def tool_arguments(self, tool_index: int, fragment: str, index: int = 0) -> dict[str, Any]:
        call = {"index": tool_index, "function": {"arguments": fragment}}
        return self.chunk({"tool_calls": [call]}, index=index)

    def finish(self, reason: str, index: int = 0) -> dict[str, Any]:
        return self.chunk({}, finish=reason, index=index)

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        """The final chunk: no choices, only usage (OpenAI's ``include_usage`` shape)."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }


async def role_with_first_content(
    chunks: AsyncIterator[dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """A translated stream with each choice opened as OpenAI opens it.

    The translations open every choice with :meth:`ChunkMaker.role` before they know what
    follows. That chunk is held here until the choice's first content: a tool call then carries
    the role itself, with ``"content": null`` (OpenAI's first chunk of a streamed tool call; a
    ``"content": ""`` before it reads as an empty text part, e.g. to the Vercel AI SDK); text
    or a finish follows it unchanged, as in OpenAI's text streams. Held back, it is also not
    taken as the first token, and an error before any content can still be retried.
    """
    held: dict[int, dict[str, Any]] = {}
    try:
        async for chunk in chunks:
            choices: list[dict[str, Any]] = chunk.get("choices") or []
            if len(choices) == 1:
                choice = choices[0]
                index = int(choice.get("index") or 0)
                delta = choice.get("delta") or {}
                if delta == ROLE_DELTA and choice.get("finish_reason") is None:
                    held.setdefault(index, chunk)
                    continue
                lead = held.pop(index, None) if held else None
                if lead is not None:
                    if delta.get("tool_calls") and "role" not in delta and "content" not in delta:
                        choice["delta"] = {"role": "assistant", "content": None, **delta}
                    else:
                        yield lead
            elif held:
                for lead in held.values():  # not expected: a usage chunk comes after finishes
                    yield lead
                held.clear()
            yield chunk
        for lead in held.values():
            yield lead
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # at once: a local generation stops when its stream is dropped


def merged_params(config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Request params over the provider's configured ``defaults``."""
    return {**dict(config.get("defaults") or {}), **dict(params)}


def max_tokens(params: Mapping[str, Any]) -> int | None:
    value = params.get("max_completion_tokens") or params.get("max_tokens")
    return int(value) if value else None
