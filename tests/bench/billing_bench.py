"""The usage ledger's sustained rate: events XADDed to the usage stream at a target rate by a
producer (as the llm's senders do, in pipelined batches), recorded by billing's real worker
(``python -m libs.worker billing``: its consumer group, batches of ``BILLING_LEDGER_BATCH``,
one statement per batch with the rollups) into embedded PostgreSQL (fsync on).

The backlog (entries on the stream not yet recorded) is sampled every second while the
producer runs; the rate is the events recorded divided by the time from the first XADD until
the stream is empty again. Totals are checked after the run: ledger rows, rollup requests and
the cost summed in both equal what was sent (each event priced from the catalogue).

    make bench billing
    python -m tests.bench.billing_bench [--rate 12000] [--duration 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis.asyncio import Redis
from sqlalchemy import text

from libs.budget import Reservation, budget_key, reserve, spent, token_budget_key
from libs.db import make_engine
from libs.entitlements import Entitlements, Limits, publish
from libs.prices import load_catalogue
from libs.usage import USAGE_STREAM, UsageEvent, prepare_usage, publish_usage_batch
from tests.bench import load
from tests.bench.llm_bench import BODY as CHAT_BODY
from tests.bench.llm_bench import LIMITS, models_yaml
from tests.bench.stack import stack

MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"), ("local", "qwen"), ("anthropic", "x")]
CHUNK = 500  # events per producer pipeline (a sender's batch)


def make_events(n: int) -> list[UsageEvent]:
    orgs = [uuid.uuid4() for _ in range(50)]
    keys = [uuid.uuid4() for _ in range(200)]
    users = [uuid.uuid4() for _ in range(100)]
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        out.append(
            UsageEvent(
                request_id=f"chatcmpl-{uuid.uuid4().hex}",
                org_id=orgs[i % len(orgs)],
                key_id=keys[i % len(keys)],
                user_id=users[i % len(users)],
                model=model,
                provider=provider,
                prompt_tokens=100 + i % 50,
                completion_tokens=20 + i % 30,
                cost_usd=Decimal("0.0001"),
                created_at=now,
            )
        )
    return out


def expected_cost(events: list[UsageEvent]) -> Decimal:
    prices = load_catalogue(None)
    total = Decimal(0)
    for e in events:
        price = prices.price_at(e.provider, e.model, e.created_at)
        total += (
            price.cost(e.prompt_tokens, e.completion_tokens) if price is not None else e.cost_usd
        )
    return total


def _cpu(pids: list[int]) -> float:
    """CPU seconds so far of processes and their children (PostgreSQL's backends)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


async def produce_and_wait(
    redis_url: str, database_url: str, args: Any, workers: list[int], postgres: int
) -> dict[str, Any]:
    redis = Redis.from_url(redis_url)
    total = int(args.rate * args.duration)
    events = make_events(total)
    messages = [prepare_usage(e) for e in events]
    # the same events again, some of them: a producer's retried batches (never counted twice)
    replays = messages[: total // 20]
    backlog: list[int] = []
    worker_cpu0, pg_cpu0 = _cpu(workers), _cpu([postgres])
    t0 = time.perf_counter()
    sent = 0
    for i in range(0, total, CHUNK):
        await publish_usage_batch(messages[i : i + CHUNK], redis)
        sent += len(messages[i : i + CHUNK])
        due = t0 + sent / args.rate
        await asyncio.sleep(max(due - time.perf_counter(), 0))
        now = time.perf_counter()
        if not backlog or now - t0 >= len(backlog):
            backlog.append(int(await redis.xlen(USAGE_STREAM)))
    await publish_usage_batch(replays, redis)
    produced = time.perf_counter() - t0
    at_end = int(await redis.xlen(USAGE_STREAM))
    while (left := int(await redis.xlen(USAGE_STREAM))) > 0:
        backlog.append(left)
        await asyncio.sleep(0.05)
    drained = time.perf_counter() - t0
    worker_cpu, pg_cpu = _cpu(workers) - worker_cpu0, _cpu([postgres]) - pg_cpu0
    await redis.aclose()

    engine = make_engine(database_url, pool_size=1)
    async with engine.connect() as conn:
        rows, ledger_cost = (
            await conn.execute(text("SELECT count(*), sum(cost_usd) FROM billing.usage_events"))
        ).one()
        requests, rollup_cost = (
            await conn.execute(
                text("SELECT sum(requests), sum(cost_usd) FROM billing.usage_rollups")
            )
        ).one()
    await engine.dispose()
    want = expected_cost(events)
    assert rows == total and requests == total, (rows, requests, total)
    assert ledger_cost == want and rollup_cost == want, (ledger_cost, rollup_cost, want)
    return {
        "events": total,
        "replayed_duplicates": len(replays),
        "target_rate": args.rate,
        "producer_seconds": round(produced, 2),
        "seconds_until_recorded": round(drained, 2),
        "recorded_per_s": round(total / drained),
        "backlog_max": max(backlog),
        "backlog_at_end_of_production": at_end,
        "workers": args.workers,
        "batch": args.batch,
        "totals_exact": True,
        "worker_cpu_us_per_event": round(worker_cpu * 1e6 / total, 1),
        "postgres_cpu_us_per_event": round(pg_cpu * 1e6 / total, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def budget_race(redis_url: str, calls: int = 1000, fits: int = 100) -> dict[str, Any]:
    """``calls`` concurrent reservations of 0.01 USD against a budget that holds ``fits`` of
    them (libs/budget.py, as the llm reserves before a provider call): how many were
    admitted, what the counter holds, and the p50 of one reservation's round trip."""
    redis = Redis.from_url(redis_url, max_connections=200)
    key = budget_key(uuid.uuid4(), "2026-12-01")
    limit = Decimal("0.01") * fits

    async def one() -> tuple[bool, float]:
        t = time.perf_counter()
        result = await reserve(redis, [(key, limit)], Decimal("0.01"))
        return isinstance(result, Reservation), time.perf_counter() - t

    await reserve(redis, [("aistack:budget:{warm}", Decimal(1))], Decimal(0))  # load the script
    results = await asyncio.gather(*(one() for _ in range(calls)))
    held = await spent(redis, key)
    solo = []
    for _ in range(200):
        t = time.perf_counter()
        await reserve(redis, [("aistack:budget:{solo}", Decimal(10**6))], Decimal("0.01"))
        solo.append(time.perf_counter() - t)
    await redis.aclose()
    solo.sort()
    return {
        "calls": calls,
        "budget_allows": fits,
        "admitted": sum(ok for ok, _ in results),
        "counter_usd": str(held),
        "reservation_p50_ms_c1": round(solo[len(solo) // 2] * 1000, 3),
    }


def _key_with_budget(gateway: str) -> tuple[str, uuid.UUID]:
    """Sign up through the gateway; an API key with ``llm:use`` and a budget of its own."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    with httpx.Client(base_url=gateway, timeout=30) as client:
        client.post("/v1/auth/register", json={"email": email, "password": password})
        r = client.post("/v1/auth/login", json={"email": email, "password": password})
        r.raise_for_status()
        r = client.post(
            "/v1/api-keys",
            json={"name": "bench", "scopes": ["llm:use"], "monthly_budget_usd": "1000000"},
            headers={"authorization": f"Bearer {r.json()['access_token']}"},
        )
        r.raise_for_status()
        return str(r.json()["key"]), uuid.UUID(r.json()["org_id"])


def chat_overhead(rounds: int = 8, seconds: float = 3.0) -> dict[str, Any]:
    """A chat's latency at c=1 through the gateway with budgets on and off: two llm processes
    of this build (``LLM_BUDGETS_ENABLED`` true / false) over the bench's fake OpenAI, each
    behind its own gateway, one API key with a budget of its own, its organization on a plan
    with a spend and a token budget (published as billing does). Rounds alternate on and off
    (the order flipping each round) so drift on a shared machine hits both alike; the p50 is
    over every round's requests, and the median of the rounds' paired differences is given
    beside it."""
    with stack() as s, tempfile.TemporaryDirectory() as tmp:
        s.env["LOG_LEVEL"] = "WARNING"
        upstream = s.start_fake_openai()
        config = models_yaml(upstream.url, Path(tmp))
        auth = s.start("auth", "services.auth.app:app")
        urls, procs = {}, {}
        for mode, enabled in (("off", "false"), ("on", "true")):
            env = {"LLM_MODELS_CONFIG": str(config), "LLM_BUDGETS_ENABLED": enabled}
            llm = s.start(f"llm-{mode}", "services.llm.app:app", env=env)
            gw_env = {"GATEWAY_AUTH_URL": auth.url, "GATEWAY_LLM_URL": llm.url, **LIMITS}
            gateway = s.start(f"gateway-{mode}", "gateway.app:app", env=gw_env)
            urls[mode] = gateway.url
            procs[f"llm-{mode}"] = psutil.Process(llm.popen.pid)
            procs[f"gateway-{mode}"] = psutil.Process(gateway.popen.pid)
        for child in psutil.Process().children(recursive=True):
            if "redis" in child.name():
                procs["redis"] = child

        def probe() -> dict[str, float]:
            return {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}

        key, org = _key_with_budget(urls["on"])
        plan = Entitlements(
            plan="bench",
            limits=Limits(monthly_spend_usd=Decimal(10**6), monthly_tokens=10**12),
            period_start="2026-12-01",
        )

        async def setup() -> None:
            redis = Redis.from_url(s.infra.redis_url)
            await publish(redis, org, plan)
            await redis.aclose()

        asyncio.run(setup())
        headers = {"authorization": f"Bearer {key}"}
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        errors = {"on": 0, "off": 0}
        # CPU ms of the mode's gateway, llm and of Redis over the rounds, and their requests
        cpu: dict[str, dict[str, float]] = {"on": {}, "off": {}}
        diffs = []
        for i in range(rounds):
            p50 = {}
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                r = asyncio.run(
                    load.run(
                        f"chat, budgets {mode}",
                        f"{urls[mode]}/v1/chat/completions",
                        method="POST",
                        json=CHAT_BODY,
                        headers=headers,
                        concurrency=1,
                        duration=seconds,
                        warmup=0.5,
                        cpu_probe=probe,
                    )
                )
                for part in ("gateway", "llm", "redis"):
                    name = part if part == "redis" else f"{part}-{mode}"
                    spent_ms = r.cpu_ms.get(name, 0.0) * r.requests
                    cpu[mode][part] = cpu[mode].get(part, 0.0) + spent_ms
                latencies[mode] += r.latencies_ms
                errors[mode] += r.errors
                p50[mode] = r.p50
            diffs.append(p50["on"] - p50["off"])

        async def counters() -> dict[str, str]:
            redis = Redis.from_url(s.infra.redis_url)
            period = "2026-12-01"
            out = {
                "org_usd": str(await spent(redis, budget_key(org, period))),
                "tokens": (await redis.get(token_budget_key(org, period)) or b"0").decode(),
            }
            await redis.aclose()
            return out

        # the budget blocks the llm still holds go back once idle (libs/budget.py: 1 s)
        time.sleep(1.5)
        held = asyncio.run(counters())
    p50s = {m: statistics.median(v) for m, v in latencies.items()}
    return {
        "rounds": rounds,
        "requests": {m: len(v) for m, v in latencies.items()},
        "errors": errors,
        "p50_ms": {m: round(v, 3) for m, v in p50s.items()},
        "added_p50_ms": round(p50s["on"] - p50s["off"], 3),
        "cpu_ms_per_request": {
            m: {part: round(ms / max(len(latencies[m]), 1), 3) for part, ms in parts.items()}
            for m, parts in cpu.items()
        },
        "median_round_difference_ms": round(statistics.median(diffs), 3),
        "budget_counters_after": held,
    }


def measure(args: Any) -> dict[str, Any]:
    with stack() as s:
        env = {"BILLING_LEDGER_BATCH": str(args.batch)}
        pids = []
        for n in range(args.workers):
            pids.append(s.start_worker("billing", env).popen.pid)
            if n + 1 < args.workers:  # a second worker process has its own name
                s.procs[f"billing-worker-{n}"] = s.procs.pop("billing-worker")
        assert s.infra.postgres is not None, "needs the embedded PostgreSQL"
        postmaster = int((s.infra.postgres.pgdata / "postmaster.pid").read_text().split()[0])
        result = asyncio.run(
            produce_and_wait(s.infra.redis_url, s.infra.database_url, args, pids, postmaster)
        )
        result["budget_race"] = asyncio.run(budget_race(s.infra.redis_url))
        return result


def run_bench(duration: float) -> str:
    """For ``make bench billing``: 12k events/s offered for ``duration`` seconds; then a
    chat's p50 with budgets on and off."""
    args = argparse.Namespace(rate=12_000, duration=duration, workers=1, batch=5000)
    result = measure(args)
    race = result["budget_race"]
    cost = chat_overhead(seconds=max(duration / 4, 2.0))
    lines = [
        "| events | offered/s | recorded/s | backlog max | seconds to empty | totals exact "
        "| worker CPU us/event | PostgreSQL CPU us/event | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result['events']} (+{result['replayed_duplicates']} duplicates) | "
        f"{result['target_rate']} | {result['recorded_per_s']} | {result['backlog_max']} | "
        f"{result['seconds_until_recorded']} | {result['totals_exact']} | "
        f"{result['worker_cpu_us_per_event']} | {result['postgres_cpu_us_per_event']} | "
        f"{result['load_average_1m']} |",
        "",
        "| concurrent reservations | budget allows | admitted | counter (USD) "
        "| one reservation p50 (ms, c=1) |",
        "|---|---|---|---|---|",
        f"| {race['calls']} | {race['budget_allows']} | {race['admitted']} | "
        f"{race['counter_usd']} | {race['reservation_p50_ms_c1']} |",
        "",
        "| chat at c=1, gateway + llm | requests | errors | p50 ms "
        "| CPU ms/request: gateway | llm | Redis |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| budgets {m} | {cost['requests'][m]} | {cost['errors'][m]} | "
            f"{cost['p50_ms'][m]} | "
            + " | ".join(str(cost["cpu_ms_per_request"][m][p]) for p in ("gateway", "llm", "redis"))
            + " |"
            for m in ("off", "on")
        ),
        "",
        f"Budgets add {cost['added_p50_ms']} ms to the p50 (median of {cost['rounds']} "
        f"alternating rounds' differences: {cost['median_round_difference_ms']} ms); "
        f"counters after: {cost['budget_counters_after']}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=12_000, help="events/s offered")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of production")
    parser.add_argument("--workers", type=int, default=1, help="billing worker processes")
    parser.add_argument("--batch", type=int, default=5000, help="BILLING_LEDGER_BATCH")
    parser.add_argument(
        "--chat-overhead",
        action="store_true",
        help="only a chat's p50 with budgets on and off (see chat_overhead)",
    )
    parser.add_argument("--rounds", type=int, default=8, help="with --chat-overhead")
    args = parser.parse_args()
    if args.chat_overhead:
        print(json.dumps(chat_overhead(args.rounds, args.duration)))
        return
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
