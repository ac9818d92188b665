"""Real tokens for chunk sizes: tiktoken's ``cl100k_base`` (the encoding of OpenAI's embedding
models) read offline from the BPE rank file the repository ships with the llm service.

TRANSITION: rag reads the file where the llm keeps it (a path, never an import of the llm);
the offline loader moves to ``libs/tokens.py`` (``get_encoding(name)``) and this module then
becomes a call to it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

ROOT = Path(__file__).resolve().parents[3]
ENCODING = "cl100k_base"
# the digest tiktoken checks after a download (tiktoken_ext/openai_public.py)
SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
SPECIAL = {
    "<|endoftext|>": 100_257,
    "<|fim_prefix|>": 100_258,
    "<|fim_middle|>": 100_259,
    "<|fim_suffix|>": 100_260,
    "<|endofprompt|>": 100_276,
}
_lock = threading.Lock()


def rank_file() -> Path:
    found = sorted(ROOT.glob(f"services/llm/**/data/{ENCODING}.tiktoken.gz"))
    if not found:
        raise RuntimeError(f"the {ENCODING} rank file is missing from services/llm/**/data")
    return found[0]


@cache
def encoding() -> tiktoken.Encoding:
    """The encoding, built once per process (about 10 MiB, kept by tiktoken's Rust core)."""
    import tiktoken

    with _lock:
        raw = gzip.decompress(rank_file().read_bytes())
        if hashlib.sha256(raw).hexdigest() != SHA256:
            raise RuntimeError(f"the {ENCODING} rank file is corrupt")
        fields = raw.split()
        ranks = dict(zip(map(base64.b64decode, fields[0::2]), map(int, fields[1::2]), strict=True))
        enc = tiktoken.Encoding(
            ENCODING, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=dict(SPECIAL)
        )
        enc._mergeable_ranks = {}  # the Rust core keeps its own copy
        return enc


def count(text: str) -> int:
    """Tokens in ``text`` (special-token text counted as ordinary text)."""
    return len(encoding().encode(text, disallowed_special=()))
