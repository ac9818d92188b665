"""Domain logic of the llm service: the OpenAI-compatible calls over routed providers.

One call = resolve the alias, replay an ``Idempotency-Key`` result if there is one, serve
from the response cache when allowed, reserve the caller's tokens-per-minute budget, call the
targets (:mod:`services.llm.dispatch`), and emit exactly one usage event whatever happened
(answered, cached, failed, or cut short by the client).
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import anyio
from redis.asyncio import Redis

from libs.errors import AppError, BadRequest, NotFound, RateLimited, ServiceUnavailable
from libs.identity import Principal
from libs.ratelimit import LocalLimiter, hit_many, refund_many
from libs.redis import RedisUnavailable, guard_for
from libs.usage import UsageEvent, UsageOutbox, UsageSender
from services.llm import cache as rc
from services.llm.functions import LegacyPlan, legacy_chunk, legacy_completion, speaks_legacy
from services.llm.functions import plan as legacy_plan
from services.llm.metrics import CACHE, LATENCY, REQUESTS, TOKENS, TTFT
from services.llm.providers.base import ChatRequest, Provider, ProviderError
from services.llm.providers.base import EmbeddingRequest as ProviderEmbeddingRequest
from services.llm.routing.breaker import SharedBreakers
from services.llm.routing.config import Alias, Price, RoutingConfig, Target
from services.llm.routing.dispatch import Dispatcher, Outcome, classify, close_stream, first_chunk
from services.llm.schemas import ChatCompletionRequest, EmbeddingRequest, ModelList, ModelObject
from services.llm.settings import LlmSettings
from services.llm.streaming import DONE, Assembler, IdleTimeout, replay_chunks, sse
from services.llm.tokens import estimate, tokenizer

if TYPE_CHECKING:
    # chat, embeddings and models need no database: its layer loads with the first prompt or
    # conversation (services/llm/chat_context.py), not with the process
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from services.llm.chat_context import ChatContext

log = logging.getLogger("aistack.llm")

TPM_WINDOW_S = 60.0
PUBLISH_CONCURRENCY = 8
USAGE_BATCH = 200
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_STARTED = int(time.time())

UsagePublisher = Callable[[UsageEvent], Awaitable[None]]


@dataclass
class CallOptions:
    """What the HTTP layer passes besides the body (all from headers)."""

    idempotency_key: str | None = None
    cache: str | None = None  # x-aistack-cache header
    timeout: str | None = None  # x-aistack-timeout header


@dataclass
class Result:
    """A JSON body, or a stream of SSE bytes, plus response headers."""

    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    principal: Principal
    org_id: uuid.UUID
    alias: Alias
    kind: Literal["chat", "embedding"]
    id: str
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    # TPM limits counted for this call and how many tokens were reserved on them
    tpm_limits: list[tuple[str, int, float]] = field(default_factory=list)
    tpm_reserved: int = 0
    prompt_version: uuid.UUID | None = None


class LlmService:
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
        self._local_tpm = LocalLimiter()
        self._tpm_logged_at = float("-inf")
        self.dispatcher = Dispatcher(providers, settings)
        # breakers opened or closed in one llm process reach the others (see routing/breaker.py)
        self.shared_breakers = (
            SharedBreakers(self.dispatcher.breakers, redis) if settings.breaker_shared else None
        )
        # usage events: to an injected publisher one by one (tests), else batched, one task
        # at a time, and never dropped while Redis is down (libs.usage.UsageSender)
        self.publisher = publisher
        self.usage = UsageSender(
            "llm",
            lambda: self.redis,
            outbox=UsageOutbox("llm", lambda: self.sessions()),
            max_pending=settings.usage_max_pending,
            batch=USAGE_BATCH,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        # usage events are queued by at most this many tasks at once: under load, one task
        # per event exhausted the Redis pool ("Too many connections") and events waited on
        # retries (see _emit)
        self._publish_slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)
        # TPM tokens to give back, per organization (its keys share a hash slot) and limit;
        # sent by one flush task at a time, so refunds coalesce under load (see _refund)
        self._refunds: dict[uuid.UUID, dict[tuple[str, int, float], int]] = {}
        self._refunding = False
        # the app's session factory, looked up per call (prompts and conversations only)
        self.sessions: Callable[[], async_sessionmaker[AsyncSession] | None] = lambda: None

    # ------------------------------------------------------------------ lifecycle

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run work that must finish even if the client went away (usage, cache writes)."""

        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        # does not take now goes to the outbox table instead of waiting on the outage
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
            except ValueError as exc:
                raise BadRequest(
                    "x-aistack-timeout must be a number of seconds", code="invalid_timeout"
                ) from exc
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

    async def _reserve_tpm(self, call: _Call, needed: int) -> None:
        """Count the estimated tokens against the key's and the org's TPM limits."""
        principal, org_id = call.principal, call.org_id
        limits: list[tuple[str, int, float]] = []
        if principal.key_id is not None and principal.tpm_limit:
            limits.append((f"llm:tpm:{{{org_id}}}:key:{principal.key_id}", principal.tpm_limit, 60))
        if self.settings.org_tpm_limit > 0:
            limits.append((f"llm:tpm:{{{org_id}}}:org", self.settings.org_tpm_limit, 60))
        if not limits:
            return
        try:
            decisions = await self.guard.run(
                "llm_tpm", hit_many(self.redis, limits, max(needed, 1))
            )
        except Exception as exc:
            # Redis down or hung must not take the LLM API down with it: fail open, to the
            # same limits counted in this process alone (no later refund or top-up: those go
            # to Redis), loudly but once per interval
            now = time.monotonic()
            if now - self._tpm_logged_at >= 10:
                self._tpm_logged_at = now
                log.warning("TPM limits counted per process (Redis: %s)", exc)
            decisions = self._local_tpm.hit_many(limits, max(needed, 1))
        else:
            if decisions.allowed:
                call.tpm_limits, call.tpm_reserved = limits, max(needed, 1)
        if not decisions.allowed:
            decision = decisions.strictest()
            too_big = needed > decision.limit
            raise RateLimited(
                (
                    f"This request needs about {needed} tokens, more than the limit of "
                    f"{decision.limit} tokens per minute"
                )
                if too_big
                else f"Tokens-per-minute limit of {decision.limit} reached; retry later",
                code="tokens_per_minute_exceeded",
                headers=decision.headers(),
                details={"limit": decision.limit, "estimated_tokens": needed},
            )

    def _event(
        self,
        call: _Call,
        *,
        target: Target | None,
        usage: dict[str, Any] | None,
        cached: bool,
        status: Literal["ok", "error", "cancelled"],
        ttft_s: float | None = None,
    ) -> UsageEvent:
        prompt = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or 0)
        price: Price = target.price if target else Price()
        cost = Decimal(0) if cached or status == "error" else price.cost(prompt, completion)
        latency = time.perf_counter() - call.started
        return UsageEvent(
            request_id=call.id,
            org_id=call.org_id,
            user_id=call.principal.user_id,
            key_id=call.principal.key_id,
            model=target.model if target else call.alias.name,
            provider=target.provider if target else "",
            kind=call.kind,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            latency_ms=int(latency * 1000),
            ttft_ms=int(ttft_s * 1000) if ttft_s is not None else None,
            cached=cached,
            status=status,
            prompt_version_id=str(call.prompt_version) if call.prompt_version else None,
        )

    def _failed(self, call: _Call) -> None:
        self._emit(call, self._event(call, target=None, usage=None, cached=False, status="error"))

    def _ok(self, call: _Call, target: Target, usage: dict[str, Any]) -> None:
        self._emit(call, self._event(call, target=target, usage=usage, cached=False, status="ok"))

    def _emit(self, call: _Call, event: UsageEvent) -> None:
        """Queue the call's one usage event, off the response path, retrying Redis hiccups."""
        endpoint = "chat" if event.kind == "chat" else "embeddings"
        outcome = "cached" if event.cached else event.status
        REQUESTS.labels(endpoint, call.alias.name, outcome).inc()
        if event.provider and not event.cached and event.status != "error":
            TOKENS.labels(event.provider, event.model, "prompt").inc(event.prompt_tokens)
            TOKENS.labels(event.provider, event.model, "completion").inc(event.completion_tokens)

        # the estimate fell short (a long answer without max_tokens): count the rest, so the
        # next requests wait it off; it was too high (max_tokens 4000, answer 50; a failed
        # call: no usage at all): give the difference back
        if call.tpm_limits and not event.cached:
            extra = event.prompt_tokens + event.completion_tokens - call.tpm_reserved
            if extra > 0:
                self.spawn(self._count_extra_tokens(call.tpm_limits, extra))
            elif extra < 0:
                self._refund(call, -extra)
            call.tpm_limits = []  # settled: one event, one adjustment

        if self.publisher is None:
            # captured now (request id, trace); sent with whatever else is waiting, and kept
            # (memory, then the outbox table) for as long as Redis is unreachable
            self.usage.add_event(event)
            return
        publisher = self.publisher

        async def send() -> None:
            for attempt in range(5):
                try:
                    async with self._publish_slots:
                        await publisher(event)
                    return
                except Exception:
                    log.warning(
                        "usage event %s not queued (attempt %d)",
                        event.job_id,
                        attempt + 1,
                        exc_info=True,
                    )
                    await asyncio.sleep(0.2 * 2**attempt)
            log.error("usage event lost: %s", event.model_dump_json())

        self.spawn(send())

    def _refund(self, call: _Call, n: int) -> None:
        """Give ``n`` reserved tokens back to the call's TPM limits, off the response path."""
        if n <= 0 or not call.tpm_limits:
            return
        pending = self._refunds.setdefault(call.org_id, {})
        for limit in call.tpm_limits:
            pending[limit] = pending.get(limit, 0) + n
        call.tpm_limits = []
        if not self._refunding:
            self._refunding = True
            self.spawn(self._flush_refunds())

    def _refund_all(self, call: _Call) -> None:
        """The call ended before the provider used anything (cancelled): free its reservation."""
        self._refund(call, call.tpm_reserved)

    async def _flush_refunds(self) -> None:
        """Send waiting refunds, one script call per organization, until none is left."""
        try:
            while self._refunds:
                batch, self._refunds = self._refunds, {}
                for pending in batch.values():
                    limits = list(pending)
                    try:
                        refund = refund_many(self.redis, limits, [pending[k] for k in limits])
                        await self.guard.run("llm_tpm", refund)
                    except RedisUnavailable:
                        pass  # lost while Redis is down (counted in aistack_redis_fallbacks)
                    except Exception:
                        # lost: the limit stays stricter until the tokens refill on their own
                        log.warning("could not refund TPM tokens %s", pending, exc_info=True)
        finally:
            self._refunding = False

    async def _count_extra_tokens(self, limits: list[tuple[str, int, float]], extra: int) -> None:
        try:
            await self.guard.run("llm_tpm", hit_many(self.redis, limits, extra, force=True))
        except RedisUnavailable:
            pass  # lost while Redis is down (counted in aistack_redis_fallbacks)
        except Exception:
            log.warning("could not count %d extra tokens against TPM limits", extra, exc_info=True)

    async def _claim(
        self, call: _Call, opts: CallOptions, fp: str | None
    ) -> rc.IdempotencyClaim | None:
        if not opts.idempotency_key:
            return None
        assert fp is not None
        if len(opts.idempotency_key) > 255:
            raise BadRequest("Idempotency-Key is longer than 255 characters")
        key = rc.idempotency_redis_key(call.org_id, opts.idempotency_key)
        try:
            return await rc.idempotency_claim(
                self.redis,
                key,
                fp,
                lock_ttl_s=self.settings.max_request_timeout_s + 30,
                wait_s=self.settings.idempotency_wait_s,
                guard=self.guard,
            )
        except RedisUnavailable as exc:
            # fail closed, before anything runs: without the claim a retry would run twice
            # (services/llm/cache.py); SDKs retry a 503 after Retry-After
            raise ServiceUnavailable(
                "Idempotency keys are unavailable right now; the request was not run, retry "
                "shortly",
                code="idempotency_unavailable",
                headers={"Retry-After": str(max(1, math.ceil(self.guard.retry_s)))},
            ) from exc

    def _settle(self, claim: rc.IdempotencyClaim | None, result: dict[str, Any] | None) -> None:
        """Store the result under the idempotency key (or free the key after a failure)."""
        if claim is None or not claim.owner:
            return
        self.spawn(self._settle_write(claim, result))

    async def _settle_write(
        self, claim: rc.IdempotencyClaim, result: dict[str, Any] | None
    ) -> None:
        # Redis away since the claim: wait (bounded) for it to come back rather than leave the
        # key "pending" until its lock expires (retries get 409 meanwhile, never a second run)
        deadline = time.monotonic() + rc.SETTLE_WAIT_S
        while True:
            if not await self.guard.wait_up(deadline - time.monotonic()):
                log.error("idempotency key %s left pending: Redis unavailable", claim.key)
                return
            if result is None:
                write = rc.idempotency_release(self.redis, claim)
            else:
                ttl = self.settings.idempotency_ttl_s
                write = rc.idempotency_store(self.redis, claim, result, ttl)
            try:
                await self.guard.run("llm_idempotency", write)
                return
            except RedisUnavailable:
                await asyncio.sleep(0.05)  # went down just now: wait for the probe
            except Exception:
                log.error("idempotency key %s left pending", claim.key, exc_info=True)
                return

    # ------------------------------------------------------------------ chat

    async def chat(
        self, principal: Principal, body: ChatCompletionRequest, opts: CallOptions
    ) -> Result:
        org_id = principal.require_org()
        call_id = f"chatcmpl-{os.urandom(16).hex()}"
        # the Idempotency-Key guards the request as sent (the history behind it may grow);
        # hashed only when a key or the cache needs it (a full dump of the body per request)
        fp = (
            rc.fingerprint("chat", body.model_dump(exclude_none=True))
            if opts.idempotency_key
            else None
        )
        ctx: ChatContext | None = None
        if body.prompt is not None or body.conversation_id is not None:
            # a prompt and/or a conversation make the request the provider gets; the database
            # layer (SQLAlchemy, the models, the template engine) loads with the first one
            from services.llm.chat_context import prepare_chat

            reserve = self.settings.tpm_completion_reserve
            ctx = await prepare_chat(
                self.sessions(), self.config, principal, body, call_id, reserve
            )
            body = ctx.body
        # the deprecated functions / function_call (and their history messages), as tools for
        # the providers that need them so (services/llm/functions.py)
        legacy = legacy_plan(body)
        alias = self._resolve(body.model, "chat")
        call = _Call(principal, org_id, alias, "chat", call_id)
        call.prompt_version = ctx.prompt_version_id if ctx else None
        timeout_s = self._timeout(body.timeout, opts.timeout)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # the response cache keys on what the provider gets (hashed in _chat when needed)
        cache_fp = None if ctx else fp

        claim = await self._claim(call, opts, fp)
        if claim is not None and claim.result is not None:
            completion = claim.result["completion"]
            headers = {"x-aistack-idempotent-replay": "true"}
            return self._answer(completion, body.stream, include_usage, headers)

        try:
            result = await self._chat(
                call, body, opts, claim, cache_fp, timeout_s, include_usage, legacy
            )
        except BaseException:
            self._settle(claim, None)
            # cut short before any usage was counted (cancelled while waiting on the provider)
            self._refund_all(call)
            raise
        if ctx is not None:
            # store the reply in the conversation / record the prompt version once complete
            if result.stream is not None:
                result.stream = ctx.finish_stream(result.stream, result.headers)
            elif result.body is not None:
                await ctx.finish_json(result.body, result.headers)
        return result

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
                yield sse(chunk)
            yield DONE

        return Result(stream=replay(), headers=headers)

    async def _chat(
        self,
        call: _Call,
        body: ChatCompletionRequest,
        opts: CallOptions,
        claim: rc.IdempotencyClaim | None,
        fp: str | None,
        timeout_s: float,
        include_usage: bool,
        legacy: LegacyPlan | None = None,
    ) -> Result:
        deterministic = body.temperature == 0 and (body.n or 1) == 1
        cache_key = None
        if self._cache_wanted(body.cache, opts.cache, deterministic):
            if fp is None:
                fp = rc.fingerprint("chat", body.model_dump(exclude_none=True))
            cache_key = rc.cache_key(call.org_id, fp)
            hit = await self._cache_get(cache_key)
            CACHE.labels("chat", "hit" if hit else "miss").inc()
            if hit is not None:
                completion = {**hit["completion"], "id": call.id, "created": call.created}
                hit_target = Target(hit["provider"], hit["model"], Price())
                self._emit(
                    call,
                    self._event(
                        call,
                        target=hit_target,
                        usage=completion.get("usage"),
                        cached=True,
                        status="ok",
                        ttft_s=(time.perf_counter() - call.started) if body.stream else None,
                    ),
                )
                self._settle(claim, {"completion": completion})
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

        reserve = estimate.count_messages(messages, tools) + (
            body.output_limit or self.settings.tpm_completion_reserve
        )
        await self._reserve_tpm(call, reserve)

        outcome = Outcome()
        headers = {"x-aistack-cache": "miss" if cache_key else "off"}

        if not body.stream:

            async def complete(provider: Provider, target: Target) -> dict[str, Any]:
                return await provider.chat(chat_request(provider, target))

            try:
                completion = await self.dispatcher.run(call.alias, complete, timeout_s, outcome)
            except AppError:
                self._failed(call)
                raise
            target = outcome.target
            assert target is not None
            completion = {**completion, "id": call.id}
            if to_legacy(target):
                completion = legacy_completion(completion)
            usage = completion.get("usage") or {}
            if not usage.get("prompt_tokens") and not usage.get("completion_tokens"):
                usage = _estimated_usage(messages, tools, completion)
                completion["usage"] = usage
            LATENCY.labels(target.provider, target.model, "chat").observe(
                time.perf_counter() - call.started
            )
            self._ok(call, target, usage)
            if cache_key:
                self.spawn(self._cache_put(cache_key, completion, target))
            self._settle(claim, {"completion": completion})
            headers.update(_route_headers(target, outcome))
            return Result(body=completion, headers=headers)

        async def open_stream(
            provider: Provider, target: Target
        ) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
            return await first_chunk(provider.stream_chat(chat_request(provider, target)))

        try:
            first, upstream = await self.dispatcher.run(call.alias, open_stream, timeout_s, outcome)
        except AppError:
            self._failed(call)
            raise
        target = outcome.target
        assert target is not None
        # the stream is open; its time to first token is taken at the first chunk with a choice
        # (Azure opens with a chunk of content-filter results and none)
        ttft = time.perf_counter() - call.started
        headers.update(_route_headers(target, outcome))
        relay = self._relay(
            call,
            target,
            first,
            upstream,
            messages,
            tools,
            include_usage,
            timeout_s,
            ttft,
            cache_key,
            claim,
            to_legacy(target),
        )
        # run it to its first (empty) yield, inside its try: closed without ever being read
        # (a client gone before the first write, a caller that drops it), its cleanup still
        # runs (upstream closed, one usage event, idempotency settled); a generator never
        # started skips its finally when closed
        await anext(relay)
        return Result(stream=relay, headers=headers)

    async def _relay(
        self,
        call: _Call,
        target: Target,
        first: dict[str, Any] | None,
        upstream: AsyncIterator[dict[str, Any]],
        messages: list[dict[str, Any]],
        tools: list[Any] | None,
        include_usage: bool,
        timeout_s: float,
        ttft: float,
        cache_key: str | None,
        claim: rc.IdempotencyClaim | None,
        legacy_reply: bool = False,
    ) -> AsyncIterator[bytes]:
        """Forward upstream chunks as SSE; then usage, cache and idempotency, exactly once."""
        asm = Assembler()
        finished = False
        failed = False
        base = {"id": call.id, "object": "chat.completion.chunk"}
        idle = IdleTimeout(timeout_s)
        first_choice: float | None = None
        try:
            yield b""  # primed by _chat (see there); never sent
            chunk = first
            while chunk is not None:
                if legacy_reply:
                    # tool calls back as the caller's deprecated function_call
                    chunk = legacy_chunk(chunk)
                asm.add(chunk)
                if chunk.get("choices"):
                    if first_choice is None:
                        first_choice = time.perf_counter() - call.started
                        TTFT.labels(target.provider, target.model).observe(first_choice)
                    out = {**chunk, **base}
                    if include_usage:
                        out["usage"] = None
                    else:
                        out.pop("usage", None)
                    yield sse(out)
                try:
                    chunk = await idle.wait(anext(upstream))
                except StopAsyncIteration:
                    chunk = None
            if include_usage:
                usage = asm.usage or _estimated_usage_stream(messages, tools, asm)
                yield sse(
                    {
                        **base,
                        "created": asm.created or call.created,
                        "model": asm.model or target.model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield DONE
            finished = True
        except Exception as exc:
            failed = True
            err = classify(exc, target.provider)
            log.warning("stream from %s broke: %s", target.provider, err.message)
            # the client already has bytes: report in-band, as OpenAI does; SDKs raise on it
            yield sse(
                {
                    "error": {
                        "message": f"Upstream stream failed: {err.message}",
                        "type": "api_error",
                        "param": None,
                        "code": err.code or "upstream_error",
                    }
                }
            )
        finally:
            idle.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await close_stream(upstream)
            # neither finished nor failed: the client left (the response closed this
            # generator, or cancelled it waiting for the upstream). Billed for what it got.
            status: Literal["ok", "error", "cancelled"] = (
                "error" if failed else "ok" if finished else "cancelled"
            )
            if status == "cancelled":
                usage = _delivered_usage(messages, tools, asm)
            else:
                usage = asm.usage or _estimated_usage_stream(messages, tools, asm)
            LATENCY.labels(target.provider, target.model, "chat").observe(
                time.perf_counter() - call.started
            )
            self._emit(
                call,
                self._event(
                    call,
                    target=target,
                    usage=usage,
                    cached=False,
                    status=status,
                    ttft_s=first_choice if first_choice is not None else ttft,
                ),
            )
            completion = asm.completion(call.id, call.created, usage) if finished else None
            if completion is not None and cache_key:
                self.spawn(self._cache_put(cache_key, completion, target))
            self._settle(claim, {"completion": completion} if completion else None)

    async def _cache_get(self, key: str) -> dict[str, Any] | None:
        # Redis down or hung: skipped, a miss (services/llm/cache.py)
        try:
            return await self.guard.run("llm_cache", rc.cache_get(self.redis, key))
        except RedisUnavailable:
            return None

    async def _cache_put(self, key: str, completion: dict[str, Any], target: Target) -> None:
        value = {"completion": completion, "provider": target.provider, "model": target.model}
        await self._cache_write(key, value)

    async def _cache_write(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self.guard.run(
                "llm_cache", rc.cache_put(self.redis, key, value, self.settings.cache_ttl_s)
            )
        except RedisUnavailable:
            pass  # dropped while Redis is down (counted in aistack_redis_fallbacks)
        except Exception:
            log.warning("response cache write failed", exc_info=True)

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
        call = _Call(principal, org_id, alias, "embedding", f"embd-{uuid.uuid4().hex}")
        timeout_s = self._timeout(body.timeout, opts.timeout)
        fp = rc.fingerprint("embeddings", body.model_dump(exclude_none=True))

        claim = await self._claim(call, opts, fp)
        if claim is not None and claim.result is not None:
            return Result(
                body=_encode(claim.result["response"], body.encoding_format),
                headers={"x-aistack-idempotent-replay": "true"},
            )
        try:
            return await self._embed(call, body, texts, opts, claim, fp, timeout_s)
        except BaseException:
            self._settle(claim, None)
            self._refund_all(call)
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
        call: _Call,
        body: EmbeddingRequest,
        texts: list[str],
        opts: CallOptions,
        claim: rc.IdempotencyClaim | None,
        fp: str,
        timeout_s: float,
    ) -> Result:
        cache_key = None
        if self._cache_wanted(body.cache, opts.cache, False):
            cache_key = rc.cache_key(call.org_id, fp)
            hit = await self._cache_get(cache_key)
            CACHE.labels("embeddings", "hit" if hit else "miss").inc()
            if hit is not None:
                response = hit["response"]
                hit_target = Target(hit["provider"], hit["model"], Price())
                self._emit(
                    call,
                    self._event(
                        call,
                        target=hit_target,
                        usage=response.get("usage"),
                        cached=True,
                        status="ok",
                    ),
                )
                self._settle(claim, {"response": response})
                return Result(
                    body=_encode(response, body.encoding_format),
                    headers={"x-aistack-cache": "hit", "x-aistack-provider": hit_target.provider},
                )

        await self._reserve_tpm(call, estimate.count_inputs(texts))
        params = body.params()
        outcome = Outcome()

        async def run(provider: Provider, target: Target) -> dict[str, Any]:
            return await provider.embed(ProviderEmbeddingRequest(target.model, texts, params))

        try:
            response = await self.dispatcher.run(call.alias, run, timeout_s, outcome)
        except AppError:
            self._failed(call)
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
        self._ok(call, target, usage)
        if cache_key:
            value = {"response": response, "provider": target.provider, "model": target.model}
            self.spawn(self._cache_write(cache_key, value))
        self._settle(claim, {"response": response})
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


def _estimated_usage(
    messages: list[dict[str, Any]], tools: list[Any] | None, completion: dict[str, Any]
) -> dict[str, int]:
    prompt = estimate.count_messages(messages, tools)
    out = 0
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        out += estimate.count_text(str(message.get("content") or ""))
        for call in message.get("tool_calls") or []:
            out += estimate.count_text(str((call.get("function") or {}).get("arguments") or ""))
        if message.get("function_call"):
            out += estimate.count_text(str(message["function_call"].get("arguments") or ""))
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def _estimated_usage_stream(
    messages: list[dict[str, Any]], tools: list[Any] | None, asm: Assembler
) -> dict[str, int]:
    prompt = estimate.count_messages(messages, tools)
    out = -(-asm.chars // estimate.CHARS_PER_TOKEN)
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def _delivered_usage(
    messages: list[dict[str, Any]], tools: list[Any] | None, asm: Assembler
) -> dict[str, int]:
    """Usage of a stream cut short: an upstream's own count is of what it had reported by
    then (often only the prompt); what was streamed counts at least as estimated."""
    usage = _estimated_usage_stream(messages, tools, asm)
    reported = asm.usage or {}
    prompt = int(reported.get("prompt_tokens") or 0) or usage["prompt_tokens"]
    out = max(int(reported.get("completion_tokens") or 0), usage["completion_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


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


__all__ = ["CallOptions", "LlmService", "ProviderError", "Result"]
