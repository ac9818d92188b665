"""The OpenAI-compatible calls over routed providers: chat completions, embeddings, models.

One call = resolve the alias, replay an ``Idempotency-Key`` result if there is one, serve
from the response cache when allowed, reserve the caller's tokens-per-minute budget, call the
targets (:mod:`services.llm.routing.dispatch`), and emit exactly one usage event whatever
happened (:mod:`.metering`). A stream is relayed by :mod:`.relay`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import Redis

from libs.db import SessionFactory
from libs.errors import AppError, BadRequest, NotFound
from libs.identity import Principal
from libs.redis import guard_for
from libs.sse import data_frame
from libs.usage import UsageSender
from services.llm.chat import repository
from services.llm.chat.metering import MeteredCall, Metering, UsagePublisher
from services.llm.chat.metrics import CACHE, LATENCY
from services.llm.chat.relay import OpenStream, relay
from services.llm.chat.repository import IdempotencyClaim, ResultStore
from services.llm.chat.schemas import (
    MIN_TIMEOUT_S,
    ChatCompletionRequest,
    EmbeddingRequest,
    ModelList,
    ModelObject,
)
from services.llm.chat.stream import DONE, replay_chunks
from services.llm.legacy.functions import (
    LegacyPlan,
    legacy_completion,
    speaks_legacy,
)
from services.llm.legacy.functions import plan as legacy_plan
from services.llm.providers.base import ChatRequest, Provider, ProviderError
from services.llm.providers.base import EmbeddingRequest as ProviderEmbeddingRequest
from services.llm.routing.breaker import SharedBreakers
from services.llm.routing.config import Alias, Price, RoutingConfig, Target
from services.llm.routing.dispatch import Dispatcher, Outcome, first_chunk
from services.llm.settings import LlmSettings
from services.llm.tokens import estimate, tokenizer

if TYPE_CHECKING:
    # chat, embeddings and models need no database: its layer loads with the first prompt or
    # conversation (services/llm/chat/context.py), not with the process
    from services.llm.chat.context import ChatContext

log = logging.getLogger("aistack.llm")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_STARTED = int(time.time())


@dataclass
class CallOptions:
    """What the HTTP layer passes besides the body (all from headers)."""

    idempotency_key: str | None = None
    cache: str | None = None  # x-aistack-cache header
    timeout: str | None = None  # x-aistack-timeout header
    # x-aistack-batch: the call is a line of this Batch API batch (the jobs service sends it;
    # the gateway drops x-aistack-* headers from clients), metered as batch usage
    batch: str | None = None
    # the usage kind of the calls made for this request: /v1/completions and /v1/responses
    # run through the chat pipeline but are recorded as what the client called
    kind: Literal["chat", "completion", "response"] = "chat"


@dataclass
class Result:
    """A JSON body, or a stream of SSE bytes, plus response headers."""

    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ChatService:
    """The llm's call pipeline, one per process (built by the app's lifespan)."""

    def __init__(
        self,
        settings: LlmSettings,
        config: RoutingConfig,
        providers: dict[str, Provider],
        redis: Redis,
        publisher: UsagePublisher | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.providers = providers
        self.redis = redis
        # Redis on the request path: short deadlines, skipped while down (libs/redis.py); what
        # each call does without it is written where it calls
        self.guard = guard_for(redis).configure(
            name="llm", timeout_s=settings.redis_timeout_s, retry_s=settings.redis_retry_s
        )
        self.dispatcher = Dispatcher(providers, settings)
        # breakers opened or closed in one llm process reach the others (see routing/breaker.py)
        self.shared_breakers = (
            SharedBreakers(self.dispatcher.breakers, redis) if settings.breaker_shared else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        # TPM reservations and usage events: to an injected publisher one by one (tests), else
        # batched, one task at a time, and never dropped while Redis is down
        self.metering = Metering(
            settings, redis, self.guard, self.spawn, lambda: self.sessions(), publisher
        )
        self.results = ResultStore(settings, redis, self.guard, self.spawn)
        # the app's session factory, looked up per call (prompts and conversations only)
        self.sessions: Callable[[], SessionFactory | None] = lambda: None

    @property
    def usage(self) -> UsageSender:
        """Where usage events wait to be queued to billing."""
        return self.metering.usage

    # ------------------------------------------------------------------ lifecycle

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run work that must finish even if the client went away (usage, cache writes)."""

        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unstoppable(self, work: Coroutine[Any, Any, None]) -> None:
        """Await ``work``; cancelling the caller cancels the wait, ``work`` runs to its end
        (a background task, drained at shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def start(self) -> None:
        """Start background work: following the breakers of the other llm processes."""
        if self.shared_breakers is not None:
            await self.shared_breakers.start()

    async def drain(self) -> None:
        """Wait for background work (usage events, cache writes) to finish."""
        while self._tasks or self.usage.busy:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self.usage.drain()

    async def aclose(self) -> None:
        # background work first (it may still emit usage), then the usage sender: what Redis
        # does not take now goes to the outbox table instead of waiting on the outage. The
        # budget blocks this process holds go back with the last settlements
        self.metering.release_leases()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.usage.close()
        if self.shared_breakers is not None:
            await self.shared_breakers.stop()
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception:
                log.warning("closing provider %s failed", provider.name, exc_info=True)

    # ------------------------------------------------------------------ models

    def _model_object(self, alias: Alias) -> ModelObject:
        return ModelObject(
            id=alias.name,
            created=_STARTED,
            owned_by="aistack",
            type=alias.type,
            context_window=alias.context_window,
            targets=[f"{t.provider}/{t.model}" for t in alias.targets],
        )

    def list_models(self) -> ModelList:
        return ModelList(data=[self._model_object(a) for a in self.config.aliases.values()])

    def get_model(self, model_id: str) -> ModelObject:
        alias = self.config.aliases.get(model_id)
        if alias is None:
            raise _model_not_found(model_id)
        return self._model_object(alias)

    # ------------------------------------------------------------------ shared steps

    def _resolve(self, model: str, kind: Literal["chat", "embedding"]) -> Alias:
        alias = self.config.resolve(model)
        if alias is None:
            raise _model_not_found(model)
        if alias.type != kind:
            what = "chat completions" if kind == "chat" else "embeddings"
            raise BadRequest(
                f"The model `{model}` does not support {what}", code="model_not_supported"
            )
        return alias

    def _timeout(self, body_value: float | None, header: str | None) -> float:
        value = body_value
        if value is None and header:
            try:
                value = float(header)
            except ValueError:
                value = math.nan
            # 0 or less: the default, as before; anything else must be a usable finite time
            if not (math.isfinite(value) and (value <= 0 or value >= MIN_TIMEOUT_S)):
                raise BadRequest(
                    f"x-aistack-timeout must be a number of seconds, at least {MIN_TIMEOUT_S}",
                    code="invalid_timeout",
                )
        if value is None or value <= 0:
            value = self.settings.request_timeout_s
        return min(value, self.settings.max_request_timeout_s)

    @staticmethod
    def _cache_wanted(body_flag: bool | None, header: str | None, deterministic: bool) -> bool:
        if body_flag is not None:
            return body_flag
        if header:
            h = header.strip().lower()
            if h in _TRUE:
                return True
            if h in _FALSE:
                return False
        return deterministic

    def _answered_from_cache(
        self,
        call: MeteredCall,
        hit: dict[str, Any],
        usage: dict[str, Any] | None,
        claim: IdempotencyClaim | None,
        result: dict[str, Any],
        ttft_s: float | None = None,
    ) -> Target:
        """A cache hit: its usage event (cached: nothing charged) and its idempotent result;
        the target that answered it first."""
        target = Target(hit["provider"], hit["model"], Price())
        event = self.metering.event(
            call, target=target, usage=usage, cached=True, status="ok", ttft_s=ttft_s
        )
        self.metering.emit(call, event)
        self.results.settle(claim, result)
        return target

    # ------------------------------------------------------------------ chat

    async def chat(
        self, principal: Principal, body: ChatCompletionRequest, opts: CallOptions
    ) -> Result:
        org_id = principal.require_org()
        call_id = f"chatcmpl-{os.urandom(16).hex()}"
        # the Idempotency-Key guards the request as sent (the history behind it may grow);
        # hashed only when a key or the cache needs it (a full dump of the body per request)
        fp = (
            repository.fingerprint("chat", body.model_dump(exclude_none=True))
            if opts.idempotency_key
            else None
        )
        ctx: ChatContext | None = None
        if body.prompt is not None or body.conversation_id is not None:
            # a prompt and/or a conversation make the request the provider gets; the database
            # layer (SQLAlchemy, the models, the template engine) loads with the first one
            from services.llm.chat.context import prepare_chat

            reserve = self.settings.tpm_completion_reserve
            ctx = await prepare_chat(
                self.sessions(), self.config, principal, body, call_id, reserve
            )
            body = ctx.body
        # the deprecated functions / function_call (and their history messages), as tools for
        # the providers that need them so (services/llm/legacy/functions.py)
        legacy = legacy_plan(body)
        alias = self._resolve(body.model, "chat")
        call = MeteredCall(principal, org_id, alias, opts.kind, call_id, batch=bool(opts.batch))
        call.prompt_version = ctx.prompt_version_id if ctx else None
        timeout_s = self._timeout(body.timeout, opts.timeout)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # the response cache keys on what the provider gets (hashed in _chat when needed)
        cache_fp = None if ctx else fp

        claim = await self.results.claim(org_id, opts.idempotency_key, fp)
        if claim is not None and claim.result is not None:
            completion = claim.result["completion"]
            headers = {"x-aistack-idempotent-replay": "true"}
            return self._answer(completion, body.stream, include_usage, headers)

        try:
            result = await self._chat(
                call, body, opts, claim, cache_fp, timeout_s, include_usage, legacy
            )
        except BaseException as exc:
            self.results.settle(claim, None)
            self._cut_short(call, exc)
            raise
        if ctx is not None:
            # store the reply in the conversation / record the prompt version once complete
            if result.stream is not None:
                result.stream = ctx.finish_stream(result.stream, result.headers)
            elif result.body is not None:
                # answered and charged: a client leaving now (libs/disconnect.py) stops the
                # wait, not the reply's write to its conversation
                await self._unstoppable(ctx.finish_json(result.body, result.headers))
        return result

    def _cut_short(self, call: MeteredCall, exc: BaseException) -> None:
        """A call that ended before its answer: cancelled (its client left, libs/disconnect.py,
        or the process stops) is recorded as such; otherwise its reservation is freed (a
        failure already emitted its event)."""
        if isinstance(exc, asyncio.CancelledError):
            self.metering.cancelled(call)
        else:
            self.metering.refund_all(call)

    def _answer(
        self,
        completion: dict[str, Any],
        stream: bool,
        include_usage: bool,
        headers: dict[str, str],
    ) -> Result:
        if not stream:
            return Result(body=completion, headers=headers)

        async def replay() -> AsyncIterator[bytes]:
            for chunk in replay_chunks(completion, include_usage):
                yield data_frame(chunk)
            yield DONE

        return Result(stream=replay(), headers=headers)

    async def _chat(
        self,
        call: MeteredCall,
        body: ChatCompletionRequest,
        opts: CallOptions,
        claim: IdempotencyClaim | None,
        fp: str | None,
        timeout_s: float,
        include_usage: bool,
        legacy: LegacyPlan | None = None,
    ) -> Result:
        deterministic = body.temperature == 0 and (body.n or 1) == 1
        cache_key = None
        if self._cache_wanted(body.cache, opts.cache, deterministic):
            if fp is None:
                fp = repository.fingerprint("chat", body.model_dump(exclude_none=True))
            cache_key = repository.cache_key(call.org_id, fp)
            hit = await self.results.cached(cache_key)
            CACHE.labels("chat", "hit" if hit else "miss").inc()
            if hit is not None:
                completion = {**hit["completion"], "id": call.id, "created": call.created}
                hit_target = self._answered_from_cache(
                    call,
                    hit,
                    completion.get("usage"),
                    claim,
                    {"completion": completion},
                    ttft_s=(time.perf_counter() - call.started) if body.stream else None,
                )
                headers = {"x-aistack-cache": "hit", "x-aistack-provider": hit_target.provider}
                return self._answer(completion, body.stream, include_usage, headers)

        messages = body.messages_json()
        params = body.params()
        tools = body.tools
        if legacy is not None:
            # counted as the translated request (its tools, its tool-call history)
            tools = legacy.tools

        def chat_request(provider: Provider, target: Target) -> ChatRequest:
            if legacy is None or speaks_legacy(provider):
                return ChatRequest(target.model, messages, params)
            return ChatRequest(target.model, legacy.messages, legacy.params)

        def to_legacy(target: Target) -> bool:
            """The answer goes back as function_call (it came as tool calls)."""
            if legacy is None or not legacy.legacy_reply:
                return False
            return not speaks_legacy(self.providers[target.provider])

        call.prompt_tokens = estimate.count_messages(messages, tools)
        reserve = call.prompt_tokens + (body.output_limit or self.settings.tpm_completion_reserve)
        await self.metering.reserve(call, reserve)

        outcome = Outcome()
        headers = {"x-aistack-cache": "miss" if cache_key else "off"}

        if not body.stream:

            async def complete(provider: Provider, target: Target) -> dict[str, Any]:
                call.sent_to = target
                return await provider.chat(chat_request(provider, target))

            try:
                completion = await self.dispatcher.run(call.alias, complete, timeout_s, outcome)
            except AppError:
                self.metering.failed(call)
                raise
            target = outcome.target
            assert target is not None
            completion = {**completion, "id": call.id}
            if to_legacy(target):
                completion = legacy_completion(completion)
            usage = completion.get("usage") or {}
            if not usage.get("prompt_tokens") and not usage.get("completion_tokens"):
                usage = estimate.completion_usage(messages, tools, completion)
                completion["usage"] = usage
            LATENCY.labels(target.provider, target.model, "chat").observe(
                time.perf_counter() - call.started
            )
            self.metering.answered(call, target, usage)
            if cache_key:
                self.results.cache_completion(cache_key, completion, target)
            self.results.settle(claim, {"completion": completion})
            headers.update(_route_headers(target, outcome))
            return Result(body=completion, headers=headers)

        async def open_stream(
            provider: Provider, target: Target
        ) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
            call.sent_to = target
            return await first_chunk(provider.stream_chat(chat_request(provider, target)))

        try:
            first, upstream = await self.dispatcher.run(call.alias, open_stream, timeout_s, outcome)
        except AppError:
            self.metering.failed(call)
            raise
        target = outcome.target
        assert target is not None
        # the stream is open; its time to first token is taken at the first chunk with a choice
        # (Azure opens with a chunk of content-filter results and none)
        ttft = time.perf_counter() - call.started
        headers.update(_route_headers(target, outcome))
        opened = OpenStream(
            call=call,
            target=target,
            first=first,
            upstream=upstream,
            messages=messages,
            tools=tools,
            include_usage=include_usage,
            timeout_s=timeout_s,
            ttft=ttft,
            cache_key=cache_key,
            claim=claim,
            legacy_reply=to_legacy(target),
        )
        chunks = relay(opened, self.metering, self.results)
        # run it to its first (empty) yield, inside its try: closed without ever being read
        # (a client gone before the first write, a caller that drops it), its cleanup still
        # runs (upstream closed, one usage event, idempotency settled); a generator never
        # started skips its finally when closed
        await anext(chunks)
        return Result(stream=chunks, headers=headers)

    # ------------------------------------------------------------------ embeddings

    async def embed(
        self, principal: Principal, body: EmbeddingRequest, opts: CallOptions
    ) -> Result:
        org_id = principal.require_org()
        alias = self._resolve(body.model, "embedding")
        texts = body.texts()
        if texts is None:
            texts = await self._decode_inputs(body)
        if not texts:
            raise BadRequest("input must not be empty", code="invalid_input")
        call = MeteredCall(
            principal,
            org_id,
            alias,
            "embedding",
            f"embd-{uuid.uuid4().hex}",
            batch=bool(opts.batch),
        )
        timeout_s = self._timeout(body.timeout, opts.timeout)
        fp = repository.fingerprint("embeddings", body.model_dump(exclude_none=True))

        claim = await self.results.claim(org_id, opts.idempotency_key, fp)
        if claim is not None and claim.result is not None:
            return Result(
                body=_encode(claim.result["response"], body.encoding_format),
                headers={"x-aistack-idempotent-replay": "true"},
            )
        try:
            return await self._embed(call, body, texts, opts, claim, fp, timeout_s)
        except BaseException as exc:
            self.results.settle(claim, None)
            self._cut_short(call, exc)
            raise

    @staticmethod
    async def _decode_inputs(body: EmbeddingRequest) -> list[str]:
        """Token-id input read as OpenAI reads it (cl100k_base ids), then embedded as text."""
        token_lists = body.token_inputs()
        if any(not ids for ids in token_lists):
            raise BadRequest(
                "input must not contain an empty list of tokens",
                code="invalid_input",
                details=[{"field": "input", "message": "empty token list"}],
            )
        decoded = await tokenizer.decode_inputs(token_lists)
        if isinstance(decoded, int):
            raise BadRequest(
                f"Invalid token in input[{decoded}]",
                code="invalid_input",
                details=[{"field": f"input.{decoded}", "message": "unknown token id"}],
            )
        return decoded

    async def _embed(
        self,
        call: MeteredCall,
        body: EmbeddingRequest,
        texts: list[str],
        opts: CallOptions,
        claim: IdempotencyClaim | None,
        fp: str,
        timeout_s: float,
    ) -> Result:
        cache_key = None
        if self._cache_wanted(body.cache, opts.cache, False):
            cache_key = repository.cache_key(call.org_id, fp)
            hit = await self.results.cached(cache_key)
            CACHE.labels("embeddings", "hit" if hit else "miss").inc()
            if hit is not None:
                response = hit["response"]
                hit_target = self._answered_from_cache(
                    call, hit, response.get("usage"), claim, {"response": response}
                )
                return Result(
                    body=_encode(response, body.encoding_format),
                    headers={"x-aistack-cache": "hit", "x-aistack-provider": hit_target.provider},
                )

        call.prompt_tokens = estimate.count_inputs(texts)
        await self.metering.reserve(call, call.prompt_tokens)
        params = body.params()
        outcome = Outcome()

        async def run(provider: Provider, target: Target) -> dict[str, Any]:
            call.sent_to = target
            return await provider.embed(
                ProviderEmbeddingRequest(target.model, texts, params, body.input_type)
            )

        try:
            response = await self.dispatcher.run(call.alias, run, timeout_s, outcome)
        except AppError:
            self.metering.failed(call)
            raise
        target = outcome.target
        assert target is not None
        usage = dict(response.get("usage") or {})
        if not usage.get("prompt_tokens"):
            n = estimate.count_inputs(texts)
            usage = {"prompt_tokens": n, "total_tokens": n}
        response = {
            "object": "list",
            "data": [_float_item(i, item) for i, item in enumerate(response.get("data") or [])],
            "model": response.get("model") or target.model,
            "usage": usage,
        }
        LATENCY.labels(target.provider, target.model, "embeddings").observe(
            time.perf_counter() - call.started
        )
        self.metering.answered(call, target, usage)
        if cache_key:
            value = {"response": response, "provider": target.provider, "model": target.model}
            self.results.remember(cache_key, value)
        self.results.settle(claim, {"response": response})
        headers = {"x-aistack-cache": "miss" if cache_key else "off"}
        headers.update(_route_headers(target, outcome))
        return Result(body=_encode(response, body.encoding_format), headers=headers)


# ---------------------------------------------------------------------------------------------


def _model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def _route_headers(target: Target, outcome: Outcome) -> dict[str, str]:
    return {
        "x-aistack-provider": target.provider,
        "x-aistack-model": target.model,
        "x-aistack-fallbacks": str(outcome.fallbacks),
    }


def _float_item(index: int, item: dict[str, Any]) -> dict[str, Any]:
    vector = item.get("embedding")
    if isinstance(vector, str):  # an upstream answered in base64: keep floats canonical
        raw = base64.b64decode(vector)
        vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return {"object": "embedding", "index": item.get("index", index), "embedding": vector}


def _encode(response: dict[str, Any], encoding: str) -> dict[str, Any]:
    """Embeddings as floats, or as base64 of little-endian float32 (what OpenAI SDKs ask for)."""
    if encoding != "base64":
        return response
    data = []
    for item in response["data"]:
        vector = item["embedding"]
        packed = struct.pack(f"<{len(vector)}f", *vector)
        data.append({**item, "embedding": base64.b64encode(packed).decode()})
    return {**response, "data": data}


__all__ = ["CallOptions", "ChatService", "ProviderError", "Result"]
