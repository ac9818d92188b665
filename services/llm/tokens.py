"""Offline token estimates for limits (before a call) and for usage when an upstream reports none.

A heuristic, on purpose: one token per 4 characters of text (rounded up), plus 4 tokens of
framing per message, plus the JSON of tool definitions. It needs no vendor tokenizer, costs
microseconds on the hot path, and errs on the high side for English and code (real BPE
tokenizers average 3.5-4.5 characters per token there). Exact counts come from the upstream's
``usage`` whenever it reports one; this is only for the TPM reservation and for streams that
end without usage.
"""

from __future__ import annotations

from typing import Any

import orjson

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def count_text(text: str) -> int:
    """Estimated tokens of a text: ceil(chars / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


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
