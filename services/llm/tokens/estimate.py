"""Offline token estimates for limits (before a call) and for usage when an upstream reports none.

A heuristic, on purpose: one token per 4 ASCII characters and half a token per extra UTF-8
byte of the others (a CJK, kana, Hangul or Thai character: 1 token; a Cyrillic, Greek or
Arabic letter: 1/2; an emoji: 3/2), rounded up, plus 4 tokens of framing per message, plus
the JSON of tool definitions. It needs no vendor tokenizer and costs two C-speed passes over
the text on the hot path. It errs on the high side for English and code (real BPE tokenizers
average 3.5-4.5 characters per token there) and is never below o200k_base (gpt-4o and later)
for the scripts above; cl100k_base (gpt-4) can count up to ~1.4x more for Arabic or emoji.
Exact counts come from the upstream's ``usage`` whenever it reports one; this is only for the
TPM reservation and for streams that end without usage. Trimming a conversation to a context
window counts exactly instead (:mod:`services.llm.tokens.tokenizer`).
"""

from __future__ import annotations

from typing import Any

import orjson

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def count_text(text: str) -> int:
    """Estimated tokens of a text: ceil(ASCII chars / 4 + extra UTF-8 bytes / 2)."""
    if text.isascii():
        return -(-len(text) // CHARS_PER_TOKEN)
    ascii_chars = len(text.encode("ascii", "ignore"))
    extra_bytes = len(text.encode("utf-8", "surrogatepass")) - len(text)
    return -(-(ascii_chars + 2 * extra_bytes) // CHARS_PER_TOKEN)


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                if part.get("type") == "text":
                    total += count_text(str(part.get("text") or ""))
                elif part.get("type") in ("image_url", "input_image"):
                    total += 85  # OpenAI's low-detail image cost: a fair flat estimate
                else:
                    total += count_text(orjson.dumps(part).decode())
            else:
                total += count_text(str(part))
        return total
    return count_text(str(content))


def count_messages(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    """Estimated prompt tokens of a chat request."""
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        if message.get("name"):
            total += count_text(str(message["name"]))
        if message.get("tool_calls"):
            total += count_text(orjson.dumps(message["tool_calls"]).decode())
    if tools:
        total += count_text(orjson.dumps(tools).decode())
    return total


def count_inputs(inputs: list[str]) -> int:
    """Estimated tokens of embedding inputs."""
    return sum(count_text(text) for text in inputs)


# ------------------------------------------------------------------ usage no upstream reported


def completion_usage(
    messages: list[dict[str, Any]], tools: list[Any] | None, completion: dict[str, Any]
) -> dict[str, int]:
    """Estimated usage of a ``chat.completion`` whose upstream reported none."""
    prompt = count_messages(messages, tools)
    out = 0
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        out += count_text(str(message.get("content") or ""))
        for call in message.get("tool_calls") or []:
            out += count_text(str((call.get("function") or {}).get("arguments") or ""))
        if message.get("function_call"):
            out += count_text(str(message["function_call"].get("arguments") or ""))
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def stream_usage(
    messages: list[dict[str, Any]], tools: list[Any] | None, chars: int
) -> dict[str, int]:
    """Estimated usage of a stream that reported none, from the ``chars`` it streamed."""
    prompt = count_messages(messages, tools)
    out = -(-chars // CHARS_PER_TOKEN)
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def delivered_usage(
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    chars: int,
    reported: dict[str, Any] | None,
) -> dict[str, int]:
    """Usage of a stream cut short: an upstream's own count (``reported``) is of what it had
    reported by then (often only the prompt); what was streamed counts at least as estimated."""
    usage = stream_usage(messages, tools, chars)
    reported = reported or {}
    prompt = int(reported.get("prompt_tokens") or 0) or usage["prompt_tokens"]
    out = max(int(reported.get("completion_tokens") or 0), usage["completion_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
