"""Prompts for the local chat model: OpenAI messages → its chat template, tools described in
the system prompt or forced by a grammar, and its ``<tool_call>`` answers → OpenAI tool calls.

With ``tool_choice`` ``required`` or a named function, the output is constrained by a grammar
to a valid call of one of the tools (cut short by ``max_tokens``: the call with its arguments
so far and finish ``length``, as OpenAI answers); with ``auto`` the tools are described in the
system prompt and an answer in SmolLM2's ``<tool_call>[...]</tool_call>`` format becomes tool
calls (a 135M model rarely decides well on its own). JSON mode and ``json_schema`` response
formats are enforced with a grammar."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from services.llm.providers import _translate as translate
from services.llm.providers.local.config import unsupported

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def render(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise unsupported(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=bos,
        eos_token=eos,
        raise_exception=raise_exception,
    )


def tool_prompt(tools: list[dict[str, Any]]) -> str:
    return (
        "You can call these functions:\n<tools>"
        + json.dumps(tools, ensure_ascii=False)
        + "</tools>\nTo call functions, answer only with "
        f'{TOOL_OPEN}[{{"name": "function_name", "arguments": {{...}}}}]{TOOL_CLOSE}; '
        "otherwise answer normally."
    )


def chat_messages(messages: list[dict[str, Any]], system_extra: list[str]) -> list[dict[str, str]]:
    """OpenAI messages → plain role/content messages for the model's chat template."""
    out: list[dict[str, str]] = []
    for message in messages:
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise translate.invalid(f"unsupported message role: {role}")
        for part in translate.content_parts(message.get("content")):
            if part.get("type") not in ("text", "input_text"):
                raise unsupported(f"the local model reads text only, not {part.get('type')}")
        content = translate.text_of(message.get("content"))
        calls = message.get("tool_calls") or []
        if role == "assistant" and calls:
            payload = [
                {
                    "name": (c.get("function") or {}).get("name", ""),
                    "arguments": translate.parse_arguments(
                        (c.get("function") or {}).get("arguments")
                    ),
                }
                for c in calls
            ]
            content = f"{content}{TOOL_OPEN}{json.dumps(payload, ensure_ascii=False)}{TOOL_CLOSE}"
        out.append({"role": str(role), "content": content})
    if system_extra:
        extra = "\n\n".join(system_extra)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{extra}"}
        else:
            out.insert(0, {"role": "system", "content": extra})
    return out


def tool_call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The schema of one call of one of ``tools``: ``{"name", "arguments"}``.

    A tool's parameters nest under ``arguments`` here, so their local definitions (``$defs``,
    ``definitions``: what Pydantic writes for a nested model, as instructor and others send
    it) move to the root, where their ``#/...`` references resolve, under names kept apart
    per tool."""
    variants = []
    defs: dict[str, Any] = {}
    for i, f in enumerate(tools):
        parameters, found = _hoist_definitions(f["parameters"], f"t{i}." if len(tools) > 1 else "")
        defs.update(found)
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
            }
        )
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {**schema, "$defs": defs} if defs else schema


_DEF_KEYS = ("$defs", "definitions")


def _hoist_definitions(schema: Any, prefix: str) -> tuple[Any, dict[str, Any]]:
    """``schema`` without its root definitions, its references renamed to ``#/$defs/<prefix>
    <name>``; and those definitions under their new names."""
    if not isinstance(schema, dict) or not any(isinstance(schema.get(k), dict) for k in _DEF_KEYS):
        return schema, {}
    renames = {
        f"#/{key}/{name}": f"#/$defs/{prefix}{name}"
        for key in _DEF_KEYS
        for name in (schema.get(key) or {})
    }

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: renames.get(v, v) if k == "$ref" and isinstance(v, str) else rename(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    defs = {
        f"{prefix}{name}": rename(value)
        for key in _DEF_KEYS
        for name, value in (schema.get(key) or {}).items()
    }
    return rename({k: v for k, v in schema.items() if k not in _DEF_KEYS}), defs


# llama.cpp's JSON-schema converter (this llama-cpp-python) lets a JSON string hold raw control
# characters; a model that writes a newline there leaves JSON no strict parser reads (and a
# forced tool call that is no call). Strings may hold only escaped ones, as JSON says.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def json_grammar(schema: dict[str, Any]) -> str:
    """GBNF for JSON values matching ``schema`` (``{}``: any JSON object)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf: str = json_schema_to_gbnf(json.dumps(schema or {"type": "object"}))
    return gbnf.replace(_LOOSE_CHAR, _STRICT_CHAR)


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """``<tool_call>[{"name", "arguments"}, ...]</tool_call>`` → OpenAI tool calls."""
    match = re.fullmatch(
        rf"\s*{re.escape(TOOL_OPEN)}(.*?)(?:{re.escape(TOOL_CLOSE)})?\s*", text, re.S
    )
    if not match:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments") or {}
        if not isinstance(arguments, dict):
            return None
        calls.append(translate.tool_call(translate.tool_call_id(), item["name"], arguments))
    return calls or None


# the grammar's output so far: the call's name whole, its arguments begun
_PARTIAL_CALL = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(.*)', re.S
)


def partial_call(text: str) -> list[dict[str, Any]] | None:
    """A forced call cut short by ``max_tokens``, as OpenAI hands one back (finish
    ``length``): the call with the arguments written so far. None when its name is not whole
    yet (the text is handed back instead)."""
    match = _PARTIAL_CALL.fullmatch(text)
    if not match:
        return None
    try:
        name = json.loads(f'"{match.group(1)}"')
    except ValueError:
        return None
    return [translate.tool_call(translate.tool_call_id(), name, match.group(2).rstrip())]


@dataclass
class Plan:
    """How one chat request is run: the prompt, sampling and output handling."""

    messages: list[dict[str, str]]
    sampling: dict[str, Any]
    max_tokens: int | None
    schema: dict[str, Any] | None  # grammar: a JSON Schema (or {} for any JSON)
    output: str  # "text" | "tool_grammar" | "tool_auto"
