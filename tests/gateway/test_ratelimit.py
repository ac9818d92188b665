"""Request limits at the gateway: per key, user and org, global across gateways, fail modes."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from redis.asyncio import Redis

from gateway.ratelimit import KEY_PREFIX
from libs.entitlements import Entitlements, Limits, entitlements_key, publish
from libs.ratelimit import hit_many
from libs.telemetry import metrics_text
from libs.testing import Infra
from tests.support.servers import dead_url
from tests.support.stacks.echo import Upstream, gateway_client, gateway_settings


async def test_two_gateways_sharing_redis_enforce_one_limit(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    key, _ = upstream.auth.add_api_key(rpm_limit=10)
    settings = gateway_settings(upstream.url, infra.redis_url)
    async with gateway_client(settings) as one, gateway_client(settings) as two:
        results = await asyncio.gather(
            *((one, two)[i % 2].get("/v1/models", headers={"x-api-key": key}) for i in range(30))
        )
    statuses = [r.status_code for r in results]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20
    refused = next(r for r in results if r.status_code == 429)
    # OpenAI-compatible route: OpenAI's error shape, with the wait
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "10"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 55 <= int(refused.headers["ratelimit-reset"]) <= 60


async def test_allowed_answers_carry_ratelimit_headers(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    key, _ = upstream.auth.add_api_key(rpm_limit=5, scopes=["jobs:read"])
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as gw:
        remaining = []
        for _ in range(5):
            resp = await gw.get("/v1/jobs", headers={"x-api-key": key})
            assert resp.status_code == 200
            assert resp.headers["ratelimit-limit"] == "5"
            assert int(resp.headers["ratelimit-reset"]) <= 60
            remaining.append(int(resp.headers["ratelimit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        resp = await gw.get("/v1/jobs", headers={"x-api-key": key})
        assert resp.status_code == 429
        err = resp.json()["error"]
        assert err["code"] == "rate_limited"
        assert err["details"] == {"limit": "key"}
        assert err["request_id"] == resp.headers["x-request-id"]
        assert resp.headers["retry-after"] == "12"
        # public routes are not counted
        resp = await gw.post("/v1/auth/login", json={}, headers={"x-api-key": key})
        assert resp.status_code == 200
        assert "ratelimit-limit" not in resp.headers


async def test_user_and_org_limits(upstream: Upstream, infra: Infra, redis: Redis) -> None:
    settings = gateway_settings(
        upstream.url, infra.redis_url, rate_limit_user_rpm=3, rate_limit_org_rpm=5
    )
    org = uuid.uuid4()
    alice = {"authorization": f"Bearer {upstream.auth.token(org_id=org)}"}
    bob = {"authorization": f"Bearer {upstream.auth.token(org_id=org)}"}
    key, _ = upstream.auth.add_api_key(org_id=org, scopes=["jobs:read"], rpm_limit=100)
    async with gateway_client(settings) as gw:
        statuses = [(await gw.get("/v1/jobs", headers=alice)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        # alice's refused request did not use the organization's budget
        assert (await gw.get("/v1/jobs", headers=bob)).status_code == 200
        resp = await gw.get("/v1/jobs", headers={"x-api-key": key})
        assert resp.status_code == 200
        assert resp.headers["ratelimit-limit"] == "5"
        assert resp.headers["ratelimit-remaining"] == "0"
        resp = await gw.get("/v1/jobs", headers=bob)
        assert resp.status_code == 429
        assert resp.json()["error"]["details"] == {"limit": "org"}
        # another organization is unaffected
        other = {"authorization": f"Bearer {upstream.auth.token()}"}
        assert (await gw.get("/v1/jobs", headers=other)).status_code == 200


def _counter(metrics: str, mode: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'aistack_gateway_rate_limit_unavailable_total{{mode="{mode}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_down_applies_the_fail_mode_and_counts_it(
    upstream: Upstream, mode: str
) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logging.getLogger("aistack.gateway.ratelimit").addHandler(handler)
    redis_url = dead_url().replace("http://", "redis://") + "/0"
    settings = gateway_settings(upstream.url, redis_url, rate_limit_fail_mode=mode)
    # an API key: a session token would meet the revocation check, which fails closed
    # (tests/gateway/test_redis_faults.py); API keys resolve straight from auth meanwhile
    key, _ = upstream.auth.add_api_key(scopes=["jobs:read", "llm:use"])
    async with gateway_client(settings) as gw:
        before = _counter(metrics_text(), mode)
        resp = await gw.get("/v1/jobs", headers={"x-api-key": key})
        if mode == "open":
            assert resp.status_code == 200
            assert "ratelimit-limit" not in resp.headers
        else:
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "rate_limit_unavailable"
            assert resp.headers["retry-after"] == "2"
        resp = await gw.post("/v1/chat/completions", json={}, headers={"x-api-key": key})
        assert resp.status_code == (200 if mode == "open" else 503)
        after = _counter(metrics_text(), mode)
    logging.getLogger("aistack.gateway.ratelimit").removeHandler(handler)
    assert after - before == 2
    # logged (once per interval, not per request)
    assert [r.levelname for r in records if f"failing {mode}" in r.getMessage()] == ["ERROR"]


async def test_limits_can_be_turned_off(upstream: Upstream, infra: Infra, redis: Redis) -> None:
    key, _ = upstream.auth.add_api_key(rpm_limit=1)
    settings = gateway_settings(upstream.url, infra.redis_url, rate_limit_enabled=False)
    async with gateway_client(settings) as gw:
        for _ in range(3):
            resp = await gw.get("/v1/models", headers={"x-api-key": key})
            assert resp.status_code == 200
            assert "ratelimit-limit" not in resp.headers


async def test_failed_authentications_per_address_are_limited(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    settings = gateway_settings(
        upstream.url, infra.redis_url, rate_limit_auth_failures=5, trust_forwarded_headers=True
    )
    attacker = {"x-forwarded-for": "203.0.113.7"}
    bystander = {"x-forwarded-for": "198.51.100.1"}
    before = upstream.auth.introspections
    async with gateway_client(settings) as one, gateway_client(settings) as two:
        for i in range(5):
            guess = {"x-api-key": f"ask_{i:040d}", **attacker}
            assert (await one.get("/v1/models", headers=guess)).status_code == 401
        resp = await one.get("/v1/models", headers={"x-api-key": "ask_" + "9" * 40, **attacker})
        assert resp.status_code == 429
        err = resp.json()["error"]
        assert err["code"] == "too_many_auth_failures" and err["type"] == "rate_limit_error"
        assert 1 <= int(resp.headers["retry-after"]) <= 12
        # refused before verification: auth heard of five guesses, not six
        assert upstream.auth.introspections == before + 5
        token = {"authorization": f"Bearer {upstream.auth.token()}"}
        assert (await one.get("/v1/jobs", headers={**token, **attacker})).status_code == 429
        # another address is unaffected
        assert (await one.get("/v1/jobs", headers={**token, **bystander})).status_code == 200
        # the count is shared: the next gateway blocks the address after its first failure
        assert (
            await two.get("/v1/jobs", headers={"authorization": "Bearer x", **attacker})
        ).status_code == 401
        assert (await two.get("/v1/jobs", headers={**token, **attacker})).status_code == 429


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


async def _counted(redis: Redis, key_id: str, limit: int, window: int = 60) -> int:
    """Units of the key's limit counted in Redis so far (a read: cost 0)."""
    result = await hit_many(redis, [(f"{KEY_PREFIX}:key:{key_id}", limit, window)], cost=0)
    return limit - result.decisions[0].remaining


async def test_a_busy_key_is_counted_in_leases_with_exact_headers(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    # 1,000 per hour (no noticeable refill during the test): leases of at most 10 units (1 %)
    key, info = upstream.auth.add_api_key(rpm_limit=1000)
    settings = gateway_settings(upstream.url, infra.redis_url, rate_limit_window_seconds=3600)
    async with gateway_client(settings) as gw:
        before = await _evalsha_calls(redis)
        remaining = []
        for _ in range(40):
            resp = await gw.get("/v1/models", headers={"x-api-key": key})
            assert resp.status_code == 200
            assert resp.headers["ratelimit-limit"] == "1000"
            remaining.append(int(resp.headers["ratelimit-remaining"]))
        calls = await _evalsha_calls(redis) - before
    # what the client sees is exact: one unit per request
    assert remaining == list(range(999, 959, -1))
    # far fewer round trips than requests (1, 2, 4, 8, then 10 at a time)
    assert calls <= 8, calls
    # Redis counted every request, and at most one lease more
    counted = await _counted(redis, info["key_id"], 1000, 3600)
    assert 40 <= counted <= 50, counted


async def test_leases_never_let_more_through_than_the_limit(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    key, _ = upstream.auth.add_api_key(rpm_limit=300)  # leases of up to 3
    # per hour: no refill while the test runs
    settings = gateway_settings(upstream.url, infra.redis_url, rate_limit_window_seconds=3600)
    async with gateway_client(settings) as one, gateway_client(settings) as two:
        results = await asyncio.gather(
            *((one, two)[i % 2].get("/v1/models", headers={"x-api-key": key}) for i in range(400))
        )
    statuses = [r.status_code for r in results]
    # near the limit every request is counted on its own: exactly the limit passes
    assert statuses.count(200) == 300, statuses.count(200)
    assert statuses.count(429) == 100


async def test_a_quiet_key_is_counted_exactly(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    key, info = upstream.auth.add_api_key(rpm_limit=1000)
    settings = gateway_settings(upstream.url, infra.redis_url, rate_limit_window_seconds=3600)
    async with gateway_client(settings) as gw:
        for _ in range(7):  # leases of 1, 2 and 4: all spent
            assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200
        assert await _counted(redis, info["key_id"], 1000, 3600) == 7
        await asyncio.sleep(1.1)  # past the lease time: the next lease is sized on use
        for _ in range(2):
            assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200
            await asyncio.sleep(1.1)
    # a caller whose leases expire is charged what it used, not a lease each time
    assert await _counted(redis, info["key_id"], 1000, 3600) <= 7 + 8 + 2


async def test_an_organizations_plan_sets_its_limit_and_a_plan_change_moves_it(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    """Billing publishes each organization's entitlements to Redis; the gateway's org limit
    is the plan's rpm (the setting only for organizations without one)."""
    settings = gateway_settings(
        upstream.url, infra.redis_url, rate_limit_org_rpm=100, entitlements_ttl_seconds=0
    )
    org, other = uuid.uuid4(), uuid.uuid4()
    small = Entitlements(plan="tiny", limits=Limits(rpm=2))
    await publish(redis, org, small)
    alice = {"authorization": f"Bearer {upstream.auth.token(org_id=org)}"}
    bob = {"authorization": f"Bearer {upstream.auth.token(org_id=other)}"}
    async with gateway_client(settings) as gw:
        statuses = [(await gw.get("/v1/jobs", headers=alice)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await gw.get("/v1/jobs", headers=alice)
        assert refused.json()["error"]["details"] == {"limit": "org"}
        assert refused.headers["ratelimit-limit"] == "2"
        # another organization, no plan published: the setting
        assert (await gw.get("/v1/jobs", headers=bob)).headers["ratelimit-limit"] == "100"
        # the organization moves to a bigger plan: its next request sees it
        await publish(redis, org, Entitlements(plan="big", limits=Limits(rpm=50)))
        resp = await gw.get("/v1/jobs", headers=alice)
        assert resp.status_code == 200, (resp.text, dict(resp.headers))
        assert resp.headers["ratelimit-limit"] == "50"
    await redis.delete(entitlements_key(org))
