"""Real tokens for chunk sizes: tiktoken's ``cl100k_base`` (the encoding of OpenAI's embedding
models), loaded offline by ``libs/tokens.py``."""

from __future__ import annotations

from libs.tokens import get_encoding

ENCODING = "cl100k_base"


def count(text: str) -> int:
    """Tokens in ``text`` (special-token text counted as ordinary text)."""
    return len(get_encoding(ENCODING).encode_ordinary(text))
