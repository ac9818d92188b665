"""Feature flags from Redis: one evaluation, versioned shared sets, a short in-process cache."""

from __future__ import annotations

import asyncio
import uuid

import orjson
from fastapi import APIRouter
from redis.asyncio import Redis

from libs.app import create_app
from libs.embedded import free_port
from libs.flags import (
    FLAGS_DEFS_KEY,
    FLAGS_VERSION_KEY,
    FlagDefinition,
    FlagReader,
    FlagsDep,
    evaluated_key,
    publish_all,
    publish_flag,
)
from libs.settings import ServiceSettings
from libs.testing import Infra, auth_headers, client_for, principal


def test_rollout_is_deterministic_per_org_and_proportional() -> None:
    flag = FlagDefinition("new-ui", enabled=True, rollout_percentage=30)
    orgs = [uuid.uuid4() for _ in range(4000)]
    first = [flag.evaluate(o) for o in orgs]
    share = sum(first) / len(orgs)
    assert 0.26 < share < 0.34
    # the same org always gets the same answer, from a fresh definition too, by str or UUID
    again = FlagDefinition("new-ui", enabled=True, rollout_percentage=30)
    assert [again.evaluate(str(o)) for o in orgs] == first
    # a wider rollout keeps everyone who already had the flag
    wider = FlagDefinition("new-ui", enabled=True, rollout_percentage=60)
    assert all(wider.evaluate(o) for o, on in zip(orgs, first, strict=True) if on)
    # another flag at the same share reaches a different set of orgs
    other = FlagDefinition("search-v2", enabled=True, rollout_percentage=30)
    assert [other.evaluate(o) for o in orgs] != first
    assert not any(
        FlagDefinition("x", enabled=True, rollout_percentage=0).evaluate(o) for o in orgs
    )
    assert all(FlagDefinition("x", enabled=True).evaluate(o) for o in orgs[:100])


def test_per_org_override_wins() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    off = FlagDefinition("beta", enabled=False, org_overrides={str(a): True})
    assert off.evaluate(a) and not off.evaluate(b)
    on = FlagDefinition("beta", enabled=True, org_overrides={str(a): False})
    assert not on.evaluate(a) and on.evaluate(b)
    # an org outside a 0% rollout still gets it when named
    none = FlagDefinition("beta", enabled=True, rollout_percentage=0, org_overrides={str(b): True})
    assert none.evaluate(b) and not none.evaluate(a)


def test_definition_round_trips_through_its_stored_form() -> None:
    d = FlagDefinition("k", enabled=True, rollout_percentage=42, org_overrides={"o": False})
    assert FlagDefinition.loads("k", d.dumps()) == d
    assert orjson.loads(d.dumps()) == {
        "enabled": True,
        "rollout_percentage": 42,
        "org_overrides": {"o": False},
    }


async def test_reader_evaluates_the_definitions_and_shares_the_result(redis: Redis) -> None:
    org = uuid.uuid4()
    await publish_flag(redis, "beta", FlagDefinition("beta", enabled=True))
    await publish_flag(redis, "gamma", FlagDefinition("gamma", org_overrides={str(org): True}))
    reader = FlagReader(ttl=60)
    assert await reader.flags_for(redis, org) == {"beta": True, "gamma": True}
    assert await reader.flags_for(redis, uuid.uuid4()) == {"beta": True, "gamma": False}
    version = int(await redis.get(FLAGS_VERSION_KEY) or 0)
    assert version == 2
    shared = await redis.get(evaluated_key(version, org))
    assert shared is not None and orjson.loads(shared) == {"beta": True, "gamma": True}
    assert await redis.ttl(evaluated_key(version, org)) > 0
    assert await reader.is_enabled(redis, org, "gamma")
    assert not await reader.is_enabled(redis, org, "unknown")
    assert await reader.is_enabled(redis, org, "unknown", default=True)
    # callers may change what they get without changing the cache
    (await reader.flags_for(redis, org))["beta"] = False
    assert (await reader.flags_for(redis, org))["beta"] is True


async def test_reader_uses_a_set_already_evaluated_for_the_version(redis: Redis) -> None:
    org = uuid.uuid4()
    await publish_flag(redis, "beta", FlagDefinition("beta", enabled=False))
    version = int(await redis.get(FLAGS_VERSION_KEY) or 0)
    # what auth (or another service) evaluated for this version is reused as is
    await redis.set(evaluated_key(version, org), orjson.dumps({"beta": True}))
    assert await FlagReader().flags_for(redis, org) == {"beta": True}


async def test_a_change_is_seen_after_the_in_process_ttl(redis: Redis) -> None:
    org = uuid.uuid4()
    await publish_flag(redis, "beta", FlagDefinition("beta", enabled=False))
    reader = FlagReader(ttl=0.3)
    assert await reader.flags_for(redis, org) == {"beta": False}
    await publish_flag(redis, "beta", FlagDefinition("beta", enabled=True))
    # within the TTL no Redis call is made: the kept value answers
    assert await reader.flags_for(redis, org) == {"beta": False}
    await asyncio.sleep(0.35)
    assert await reader.flags_for(redis, org) == {"beta": True}
    await publish_flag(redis, "beta", None)
    await asyncio.sleep(0.35)
    assert await reader.flags_for(redis, org) == {}
    assert not await redis.exists(FLAGS_DEFS_KEY)


async def test_redis_down_keeps_the_last_known_values(redis: Redis) -> None:
    org = uuid.uuid4()
    await publish_flag(redis, "beta", FlagDefinition("beta", enabled=True))
    reader = FlagReader(ttl=0)
    assert await reader.flags_for(redis, org) == {"beta": True}
    dead = Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        assert await reader.flags_for(dead, org) == {"beta": True}
        # never seen: nothing is known, so callers' defaults apply
        assert await reader.flags_for(dead, uuid.uuid4()) == {}
        assert await reader.is_enabled(dead, uuid.uuid4(), "beta", default=True)
    finally:
        await dead.aclose()


async def test_publish_all_retries_when_a_change_lands_meanwhile(
    redis: Redis, infra: Infra
) -> None:
    await publish_flag(redis, "stale", FlagDefinition("stale", enabled=True))
    other = Redis.from_url(infra.redis_url)
    calls = 0

    async def load() -> list[FlagDefinition]:
        nonlocal calls
        calls += 1
        if calls == 1:
            # another auth process publishes a change while this one reads its database
            await publish_flag(other, "fresh", FlagDefinition("fresh", enabled=True))
            return [FlagDefinition("a", enabled=True)]
        return [FlagDefinition("a", enabled=True), FlagDefinition("fresh", enabled=True)]

    try:
        assert await publish_all(redis, load) == 2
    finally:
        await other.aclose()
    assert calls == 2
    keys: list[bytes] = await redis.hkeys(FLAGS_DEFS_KEY)  # type: ignore[misc]
    assert sorted(keys) == [b"a", b"fresh"]


async def test_flags_dependency_gives_the_callers_org_flags(redis: Redis) -> None:
    org = uuid.uuid4()
    await publish_flag(
        redis, "beta", FlagDefinition("beta", enabled=False, org_overrides={str(org): True})
    )
    router = APIRouter()

    @router.get("/flags")
    async def flags(f: FlagsDep) -> dict[str, bool]:
        return f

    app = create_app(
        service="flagtest", settings=ServiceSettings(), routers=[router], use_database=False
    )
    async with client_for(app) as client:
        mine = await client.get("/flags", headers=auth_headers(principal(org_id=org)))
        assert mine.status_code == 200 and mine.json() == {"beta": True}
        theirs = await client.get("/flags", headers=auth_headers(principal()))
        assert theirs.json() == {"beta": False}
        anonymous = await client.get("/flags")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthorized"
