"""Metering a call: its reservation against the caller's tokens-per-minute limits, and the one
usage event it emits whatever happened (answered, cached, failed, or cut short by the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from redis.asyncio import Redis

from libs.budget import (
    UNIT,
    BudgetLeases,
    Counted,
    Reservation,
    adjust,
    budget_key,
    reserve_counted,
    token_budget_key,
    units,
)
from libs.db import SessionFactory
from libs.entitlements import Entitlements, EntitlementsCache, EntitlementsUnavailable
from libs.errors import AccountFrozen, InsufficientQuota, RateLimited, ServiceUnavailable
from libs.identity import Principal
from libs.prices import load_catalogue
from libs.ratelimit import LocalLimiter, hit_many, refund_many
from libs.redis import RedisGuard, RedisUnavailable
from libs.usage import UsageEvent, UsageOutbox, UsageSender
from services.llm.chat.metrics import REQUESTS, TOKENS
from services.llm.routing.config import Alias, Price, Target
from services.llm.settings import LlmSettings

log = logging.getLogger("aistack.llm")

PUBLISH_CONCURRENCY = 8
# budget settlements wait this long to be sent together (one script call per organization)
SETTLE_EVERY_S = 0.05
USAGE_BATCH = 200

UsagePublisher = Callable[[UsageEvent], Awaitable[None]]
Spawn = Callable[[Awaitable[None]], None]


@dataclass
class MeteredCall:
    """One call being metered: who made it, for which alias, its id and clock, and what it
    reserved of the caller's TPM limits (settled by its usage event)."""

    principal: Principal
    org_id: uuid.UUID
    alias: Alias
    kind: Literal["chat", "completion", "response", "embedding"]
    id: str
    # a line of a Batch API batch: its usage event is of kind "batch"
    batch: bool = False
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    # TPM limits counted for this call and how many tokens were reserved on them
    tpm_limits: list[tuple[str, int, float]] = field(default_factory=list)
    tpm_reserved: int = 0
    prompt_version: uuid.UUID | None = None
    # the worst case reserved on the budgets (the organization's and the key's spend, the
    # plan's tokens), settled by the usage event; which of its counters count tokens
    budget: Reservation | None = None
    budget_tokens: tuple[bool, ...] = ()
    # its one usage event was emitted (answered, failed, or cut short while streaming)
    emitted: bool = False
    # the estimated prompt, and the target its request was last sent to (None: not sent yet)
    prompt_tokens: int = 0
    sent_to: Target | None = None


@dataclass(frozen=True)
class _Budget:
    """A budget a call counts against: whose, its limit (USD, or tokens)."""

    counted: Counted
    owner: Literal["organization", "API key"]
    limit: Decimal | int
    tokens: bool = False

    def refused(self, have: int) -> InsufficientQuota:
        """OpenAI's answer for a used-up quota (429 insufficient_quota), saying which."""
        if self.tokens:
            what, used = f"token budget of {self.limit} tokens", f"{have} tokens"
        else:
            what, used = f"budget of {self.limit} USD", f"{Decimal(have) * UNIT:.2f} USD"
        fix = (
            "raise it (PATCH /v1/api-keys/{id})"
            if self.owner == "API key"
            else "raise it or change plans (GET /v1/billing/subscription)"
        )
        return InsufficientQuota(
            f"This {self.owner}'s monthly {what} is used up ({used} spent or reserved this "
            f"period); {fix}",
            details={
                "budget": "api_key" if self.owner == "API key" else "organization",
                "unit": "tokens" if self.tokens else "usd",
                "limit": str(self.limit),
                "used": str(have) if self.tokens else str(Decimal(have) * UNIT),
            },
        )


def _month_start() -> str:
    now = datetime.now(UTC)
    return f"{now.year:04d}-{now.month:02d}-01"


class Metering:
    """TPM reservations and refunds, and usage events: sent to an injected publisher one by one
    (tests), else batched by :class:`libs.usage.UsageSender`, never dropped while Redis is down.
    Work off the response path goes through ``spawn`` (the service's background tasks)."""

    def __init__(
        self,
        settings: LlmSettings,
        redis: Redis,
        guard: RedisGuard,
        spawn: Spawn,
        sessions: Callable[[], SessionFactory | None],
        publisher: UsagePublisher | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.guard = guard
        self.spawn = spawn
        self._local_tpm = LocalLimiter()
        self._tpm_logged_at = float("-inf")
        self.publisher = publisher
        self.usage = UsageSender(
            "llm",
            lambda: self.redis,
            outbox=UsageOutbox("llm", sessions),
            max_pending=settings.usage_max_pending,
            batch=USAGE_BATCH,
        )
        # usage events are queued by at most this many tasks at once: under load, one task
        # per event exhausted the Redis pool ("Too many connections") and events waited on
        # retries (see emit)
        self._publish_slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)
        # TPM tokens to give back, per organization (its keys share a hash slot) and limit;
        # sent by one flush task at a time, so refunds coalesce under load (see _refund)
        self._refunds: dict[uuid.UUID, dict[tuple[str, int, float], int]] = {}
        self._refunding = False
        # budget counter changes to send, per organization (see _settle_budget)
        self._settles: dict[uuid.UUID, dict[str, int]] = {}
        self._settling = False
        # blocks of budget reserved ahead: calls far from their limits skip the round trip
        self._leases = BudgetLeases(settings.budget_exact_margin)
        self._lease_org: dict[str, uuid.UUID] = {}
        self._keeping_leases = False
        # the organization's plan (tpm, monthly budget), published by billing
        self.entitlements = EntitlementsCache(
            redis, settings.entitlements_ttl_seconds, timeout_s=settings.redis_timeout_s
        )
        self.prices = load_catalogue(None)

    # ------------------------------------------------------------------ tokens per minute

    async def reserve(self, call: MeteredCall, needed: int) -> None:
        """Count the estimated tokens against the key's and the org's TPM limits."""
        principal, org_id = call.principal, call.org_id
        ent = await self._entitlements(org_id)
        if ent is not None and ent.status == "frozen":
            raise AccountFrozen()
        limits: list[tuple[str, int, float]] = []
        if principal.key_id is not None and principal.tpm_limit:
            limits.append((f"llm:tpm:{{{org_id}}}:key:{principal.key_id}", principal.tpm_limit, 60))
        if ent is not None:
            if ent.limits.tpm:  # a bucket per limit: a smaller plan's count never carries over
                limits.append((f"llm:tpm:{{{org_id}}}:org:{ent.limits.tpm}", ent.limits.tpm, 60))
        elif self.settings.org_tpm_limit > 0:
            limits.append((f"llm:tpm:{{{org_id}}}:org", self.settings.org_tpm_limit, 60))
        if limits:
            await self._reserve_tpm(call, limits, needed)
        if self.settings.budgets_enabled:
            await self._reserve_budget(call, ent, needed)

    async def _entitlements(self, org_id: uuid.UUID) -> Entitlements | None:
        if not self.guard.up:
            return None
        try:
            return await self.entitlements.get(org_id)  # bounded by its own timeout
        except EntitlementsUnavailable as exc:
            # nothing known of the organization and Redis not answering: served as when
            # billing publishes nothing (a Redis outage must not take the LLM API down); a
            # plan known here keeps applying, its budget fail mode included
            log.warning("plan of %s unknown (Redis: %s); its limits not applied", org_id, exc)
            return None

    async def _reserve_tpm(
        self, call: MeteredCall, limits: list[tuple[str, int, float]], needed: int
    ) -> None:
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

    # ------------------------------------------------------------------ budgets

    def worst_case_usd(self, call: MeteredCall, tokens: int) -> Decimal:
        """The most ``tokens`` can cost on any target of the call's alias (every token at the
        dearest of its input and output prices)."""
        per_million = Decimal(0)
        for target in call.alias.targets:
            price = self._price(target)
            per_million = max(per_million, price.input, price.output)
        return per_million * tokens / 1_000_000

    def _price(self, target: Target) -> Price:
        """The routing file's price of a target, else the shared catalogue's (libs/prices)."""
        if target.price.input or target.price.output:
            return target.price
        found = self.prices.price_at(target.provider, target.model, datetime.now(UTC))
        if found is None:
            return target.price
        return Price(input=found.input, output=found.output)

    def _budgets(self, call: MeteredCall, ent: Entitlements | None, needed: int) -> list[_Budget]:
        """The budgets a call counts against: the plan's spend and tokens (unless its overage
        is allowed), the API key's own; all counted per the plan's period (else the month)."""
        period = ((ent.period_start if ent else None) or _month_start())[:10]
        worst = units(self.worst_case_usd(call, needed))
        out: list[_Budget] = []
        if ent is not None and ent.overage != "allow":
            spend, tokens = ent.limits.monthly_spend_usd, ent.limits.monthly_tokens
            if spend is not None:
                key = budget_key(call.org_id, period)
                out.append(_Budget(Counted(key, units(spend), worst), "organization", spend))
            if tokens is not None:
                key = token_budget_key(call.org_id, period)
                out.append(_Budget(Counted(key, tokens, needed), "organization", tokens, True))
        own = call.principal.monthly_budget_usd
        if call.principal.key_id is not None and own is not None:
            key = budget_key(call.org_id, period, call.principal.key_id)
            out.append(_Budget(Counted(key, units(own), worst), "API key", own))
        return out

    async def _reserve_budget(self, call: MeteredCall, ent: Entitlements | None, n: int) -> None:
        """Reserve the call's worst case on every budget it counts against (the plan's spend
        and tokens, or lower; its API key's own), atomically with every call in flight and
        in one script call; refuse when any would not fit. Far from every limit, the
        process admits it from the blocks it holds, without the round trip (BudgetLeases)."""
        budgets = self._budgets(call, ent, max(n, 1))
        if not budgets:
            return
        counted = [b.counted for b in budgets]
        tokens = tuple(b.tokens for b in budgets)
        leases = self._leases
        if leases.take(counted, time.monotonic()):
            # covered by the blocks this process holds: already counted in Redis
            keys = tuple(c.key for c in counted)
            call.budget = Reservation(keys, tuple(c.amount for c in counted))
            call.budget_tokens = tokens
            return
        blocks, lines = leases.asks(counted)
        try:
            try:
                result = await self.guard.run(
                    "llm_budget",
                    reserve_counted(self.redis, counted, blocks=blocks, lines=lines),
                )
            finally:
                leases.answered(counted, blocks)
        except Exception as exc:
            if self.settings.budget_fail_mode == "open":
                log.warning("budget of %s not checked (Redis: %s)", call.org_id, exc)
                return
            # a budget that is not checked is one concurrent calls overshoot: refused instead
            self.refund_all(call)
            raise ServiceUnavailable(
                "The organization's budget cannot be checked right now; retry shortly",
                code="budget_unavailable",
                headers={"retry-after": "1"},
            ) from exc
        if isinstance(result, Reservation):
            if any(result.granted):
                leases.grant(result.keys, result.granted, time.monotonic())
                for key in result.keys:
                    self._lease_org[key] = call.org_id
                self._keep_leases()
            call.budget = result
            call.budget_tokens = tokens
            return
        self.refund_all(call)
        index, have = result
        raise budgets[index].refused(have)

    def _budget_cost(self, event: UsageEvent) -> Decimal:
        """What a call counts against its budget: its event's cost, else (a target without a
        price in the routing file) the shared catalogue's, as billing will record it."""
        if event.cost_usd or event.cached or event.status == "error":
            return event.cost_usd
        found = self.prices.price_at(event.provider, event.model, event.created_at)
        return found.cost(event.prompt_tokens, event.completion_tokens) if found else Decimal(0)

    def _settle_budget(self, call: MeteredCall, cost: Decimal, tokens: int) -> None:
        """Queue the call's settlement: what it used minus what it reserved, per counter,
        summed with the other calls' settlements of its organization and sent by one flush
        task every SETTLE_EVERY_S (one script call for many calls; until then a counter holds
        the worst case: stricter than the truth, never looser)."""
        reservation, call.budget = call.budget, None
        if reservation is None:
            return
        used = [tokens if t else units(cost) for t in call.budget_tokens]
        self._queue_budget(
            call.org_id,
            {
                key: u - amount
                for key, amount, u in zip(reservation.keys, reservation.amounts, used, strict=True)
            },
        )

    def _keep_leases(self) -> None:
        if not self._keeping_leases:
            self._keeping_leases = True
            self.spawn(self._return_idle_leases())

    async def _return_idle_leases(self) -> None:
        """Give blocks unused for a while back to their counters (with the settlements)."""
        try:
            while self._leases.held:
                await asyncio.sleep(self._leases.idle_s)
                self._give_back(self._leases.release(time.monotonic()))
        finally:
            self._keeping_leases = False

    def release_leases(self) -> None:
        """Give every block back (at shutdown: sent by the settlements' flush)."""
        self._give_back(self._leases.release())

    def _give_back(self, deltas: dict[str, int]) -> None:
        by_org: dict[uuid.UUID, dict[str, int]] = {}
        for key, d in deltas.items():
            org = self._lease_org.pop(key, None)
            if org is not None:
                by_org.setdefault(org, {})[key] = d
        for org, part in by_org.items():
            self._queue_budget(org, part)

    def _queue_budget(self, org_id: uuid.UUID, deltas: dict[str, int]) -> None:
        """Add counter changes to the organization's next flush (see _flush_settles)."""
        if not deltas:
            return
        pending = self._settles.setdefault(org_id, {})
        for key, d in deltas.items():
            pending[key] = pending.get(key, 0) + d
        if not self._settling:
            self._settling = True
            self.spawn(self._flush_settles())

    async def _flush_settles(self) -> None:
        try:
            failures = 0
            while self._settles:
                await asyncio.sleep(SETTLE_EVERY_S if not failures else 0.1 * 2**failures)
                batch, self._settles = self._settles, {}
                failed: dict[uuid.UUID, dict[str, int]] = {}
                for org_id, deltas in batch.items():
                    try:
                        await self.guard.run("llm_budget", adjust(self.redis, deltas))
                    except Exception as exc:
                        failed[org_id] = deltas
                        error = exc
                if not failed:
                    failures = 0
                    continue
                failures += 1
                if failures > 5:
                    # the counters keep the worst cases: stricter than the truth, never looser
                    log.warning(
                        "budget settlements of %d organizations lost (%s)", len(failed), error
                    )
                    failures = 0
                    continue
                for org_id, deltas in failed.items():  # with what queued meanwhile
                    pending = self._settles.setdefault(org_id, {})
                    for key, d in deltas.items():
                        pending[key] = pending.get(key, 0) + d
        finally:
            self._settling = False

    def refund_all(self, call: MeteredCall) -> None:
        """The call ended before the provider used anything (cancelled): free its reservation."""
        self._refund(call, call.tpm_reserved)
        self._settle_budget(call, Decimal(0), 0)

    def _refund(self, call: MeteredCall, n: int) -> None:
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

    # ------------------------------------------------------------------ usage events

    def event(
        self,
        call: MeteredCall,
        *,
        target: Target | None,
        usage: dict[str, Any] | None,
        cached: bool,
        status: Literal["ok", "error", "cancelled"],
        ttft_s: float | None = None,
    ) -> UsageEvent:
        """The call's usage event (priced by the target that answered)."""
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
            kind="batch" if call.batch else call.kind,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            latency_ms=int(latency * 1000),
            ttft_ms=int(ttft_s * 1000) if ttft_s is not None else None,
            cached=cached,
            status=status,
            prompt_version_id=str(call.prompt_version) if call.prompt_version else None,
        )

    def failed(self, call: MeteredCall) -> None:
        """The call failed before any provider answered: an error event, nothing charged."""
        self.emit(call, self.event(call, target=None, usage=None, cached=False, status="error"))

    def cancelled(self, call: MeteredCall) -> None:
        """The call was cancelled (its client left) before any answer came back: one cancelled
        event, its reservations settled. Sent to a provider, it counts the estimated prompt
        (the provider has it; what it charges is not reported to a caller that hung up: the
        prompt is the least, as for a stream cut before its first token); not sent, nothing."""
        if call.emitted:
            self.refund_all(call)
            return
        # its tokens-per-minute reservation is all given back, as for a failed call
        self._refund(call, call.tpm_reserved)
        target = call.sent_to
        usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": 0} if target else None
        self.emit(
            call, self.event(call, target=target, usage=usage, cached=False, status="cancelled")
        )

    def answered(self, call: MeteredCall, target: Target, usage: dict[str, Any]) -> None:
        self.emit(call, self.event(call, target=target, usage=usage, cached=False, status="ok"))

    def emit(self, call: MeteredCall, event: UsageEvent) -> None:
        """Queue the call's one usage event, off the response path, retrying Redis hiccups."""
        call.emitted = True
        endpoint = "embeddings" if call.kind == "embedding" else "chat"
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
        if call.budget is not None:
            spent = 0 if event.cached else event.prompt_tokens + event.completion_tokens
            self._settle_budget(call, self._budget_cost(event), spent)

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
