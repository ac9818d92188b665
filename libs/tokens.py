"""OpenAI's tiktoken encodings offline, for every service that counts tokens.

tiktoken downloads its BPE rank files at run time; an air-gapped install cannot, so they ship
in ``libs/data/`` (its README says where they come from) and :func:`build_encoding` builds the
``Encoding`` from them. Each file's SHA-256 is checked when it loads (the digest tiktoken
checks after a download): a corrupt file fails loudly instead of miscounting.

An encoding loads once per process, on first use (:func:`get_encoding`, or
:func:`load_encoding` from async code, which loads it in a worker thread): o200k_base takes
~1.2 s of CPU and ~45 MiB, cl100k_base half that. A service may register more encodings under
their own names (:func:`register`: the llm's local model vocabulary).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import ctypes
import gzip
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("aistack.tokens")

DATA_DIR = Path(__file__).parent / "data"


class Encoding(Protocol):
    """What counting needs of an encoding: tiktoken's, or a model's own vocabulary."""

    @property
    def name(self) -> str: ...

    def encode_ordinary(self, text: str) -> list[int]: ...


class TokenizerDataError(RuntimeError):
    """A shipped rank file is missing or is not the file it should be."""


@dataclass(frozen=True)
class _Spec:
    file: str
    sha256: str  # of the decompressed file: the expected_hash in tiktoken_ext/openai_public.py
    pat_str: str
    special_tokens: dict[str, int]


# pat_str and special tokens as tiktoken_ext/openai_public.py defines them (copied: its
# constructors download the rank file before returning them; a test checks they still match)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PAT = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501

SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec(
        file="o200k_base.tiktoken.gz",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT,
        special_tokens={"<|endoftext|>": 199_999, "<|endofprompt|>": 200_018},
    ),
    "cl100k_base": _Spec(
        file="cl100k_base.tiktoken.gz",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT,
        special_tokens={
            "<|endoftext|>": 100_257,
            "<|fim_prefix|>": 100_258,
            "<|fim_middle|>": 100_259,
            "<|fim_suffix|>": 100_260,
            "<|endofprompt|>": 100_276,
        },
    ),
}


def read_ranks(name: str, data_dir: Path | None = None) -> dict[bytes, int]:
    """The mergeable ranks of encoding ``name`` from its shipped file, checked."""
    spec = SPECS[name]
    path = (data_dir or DATA_DIR) / spec.file
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:  # missing, unreadable or not gzip
        raise TokenizerDataError(f"cannot read the {name} rank file {path}: {exc}") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise TokenizerDataError(
            f"the {name} rank file {path} is corrupt: sha256 {digest}, expected {spec.sha256}"
        )
    # lines of "<base64 token> <rank>"; the digest vouches for the format
    fields = raw.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


_builders: dict[str, Callable[[], Encoding]] = {}


def register(name: str, build: Callable[[], Encoding]) -> None:
    """Make ``get_encoding(name)`` build the encoding with ``build`` (once, on first use)."""
    _builders[name] = build


def build_encoding(name: str, data_dir: Path | None = None) -> Encoding:
    """A tiktoken Encoding from the shipped files (no network), or a registered encoding."""
    if name in _builders:
        return _builders[name]()
    import tiktoken  # with the first encoding loaded, not with the process

    spec = SPECS[name]
    encoding = tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=read_ranks(name, data_dir),
        special_tokens=dict(spec.special_tokens),
    )
    # The Rust core keeps its own copy of the ranks; the Python dict (~20 MiB for o200k) is
    # only read again to pickle the Encoding, which nothing here does.
    encoding._mergeable_ranks = {}
    return encoding


_encodings: dict[str, Encoding] = {}
_failed: dict[str, TokenizerDataError] = {}  # a broken file is not read again per request
_load_lock = threading.Lock()


def loaded(name: str) -> bool:
    """Whether encoding ``name`` is in memory already."""
    return name in _encodings


def get_encoding(name: str) -> Encoding:
    """Encoding ``name``, loaded on first use (blocking: call it from a worker thread)."""
    found = _encodings.get(name)
    if found is not None:
        return found
    with _load_lock:  # concurrent first uses load it once
        found = _encodings.get(name)
        if found is None:
            if name in _failed:
                raise _failed[name]
            started = time.perf_counter()
            try:
                found = _encodings[name] = build_encoding(name)
            except TokenizerDataError as exc:
                log.error("tokenizer %s cannot load: %s", name, exc)
                _failed[name] = exc
                raise
            _return_freed_memory()
            log.info("tokenizer %s loaded in %.2f s", name, time.perf_counter() - started)
        return found


def _return_freed_memory() -> None:
    """Give the heap the parsed ranks left behind back to the OS (glibc; a few MiB)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


async def load_encoding(name: str) -> Encoding:
    """Encoding ``name``; the first call loads it in a worker thread."""
    found = _encodings.get(name)
    if found is not None:
        return found
    return await asyncio.to_thread(get_encoding, name)
