"""Flags changed through auth's admin API reach every service's reader (libs.flags) through
Redis, with the same evaluation auth itself answers with."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from libs.flags import FLAGS_DEFS_KEY, FLAGS_VERSION_KEY, FlagDefinition, FlagReader
from libs.identity import Principal
from libs.testing import auth_headers, client_for
from services.auth.app import build_app
from services.auth.flags.service import publish_flag_definitions
from services.auth.models import FeatureFlag
from tests.support.stacks.auth import SERVICE, auth_settings, signup

TTL = 0.3


async def _put(client: httpx.AsyncClient, key: str, **body: object) -> None:
    resp = await client.put(f"/v1/admin/flags/{key}", json=body, headers=SERVICE)
    assert resp.status_code in (200, 201), resp.text


async def _auth_view(client: httpx.AsyncClient, org_id: uuid.UUID) -> dict[str, bool]:
    headers = auth_headers(Principal(user_id=uuid.uuid4(), org_id=org_id))
    resp = await client.get("/v1/auth/flags", headers=headers)
    assert resp.status_code == 200, resp.text
    flags: dict[str, bool] = resp.json()["flags"]
    return flags


async def test_a_change_through_auth_reaches_a_reader_within_its_ttl(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    acct = await signup(client)
    reader = FlagReader(ttl=TTL)
    assert await reader.flags_for(redis, acct.org_id) == {}

    await _put(client, "beta", enabled=True)
    await asyncio.sleep(TTL + 0.05)
    assert await reader.flags_for(redis, acct.org_id) == {"beta": True}

    # the per-org override wins over the global switch
    await _put(client, "beta", enabled=True, org_overrides={str(acct.org_id): False})
    await asyncio.sleep(TTL + 0.05)
    assert await reader.flags_for(redis, acct.org_id) == {"beta": False}
    assert await reader.is_enabled(redis, uuid.uuid4(), "beta")

    assert (await client.delete("/v1/admin/flags/beta", headers=SERVICE)).status_code == 204
    await asyncio.sleep(TTL + 0.05)
    assert await reader.flags_for(redis, acct.org_id) == {}
    assert await reader.is_enabled(redis, acct.org_id, "beta", default=True)


async def test_readers_and_auth_agree_on_a_percentage_rollout(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    await _put(client, "new-ui", enabled=True, rollout_percentage=50)
    orgs = [uuid.uuid4() for _ in range(30)]
    expected = [
        FlagDefinition("new-ui", enabled=True, rollout_percentage=50).evaluate(o) for o in orgs
    ]
    assert any(expected) and not all(expected)
    # a reader that evaluates the definitions itself (auth has not cached these orgs)
    first = [await FlagReader(ttl=0).is_enabled(redis, o, "new-ui") for o in orgs]
    assert first == expected
    # auth answers the same, and so does a second reader (from the shared sets)
    assert [(await _auth_view(client, o))["new-ui"] for o in orgs] == expected
    assert [await FlagReader().is_enabled(redis, o, "new-ui") for o in orgs] == expected


async def test_auth_startup_replaces_the_definitions_in_redis(
    db: AsyncConnection, redis: Redis
) -> None:
    # left over from before: a flag deleted while Redis was unreachable
    ghost = FlagDefinition("ghost", enabled=True).dumps()
    await redis.hset(FLAGS_DEFS_KEY, "ghost", ghost)  # type: ignore[misc]
    async with client_for(build_app(auth_settings()), connection=db) as client:
        assert not await redis.hexists(FLAGS_DEFS_KEY, "ghost")  # type: ignore[misc]
        assert int(await redis.get(FLAGS_VERSION_KEY) or 0) >= 1
        assert (await client.get("/health")).status_code == 200


async def test_definitions_come_from_the_database(db: AsyncConnection, redis: Redis) -> None:
    org = uuid.uuid4()
    async with AsyncSession(bind=db, join_transaction_mode="create_savepoint") as session:
        session.add(FeatureFlag(key="from-db", enabled=False, org_overrides={str(org): True}))
        session.add(FeatureFlag(key="half", enabled=True, rollout_percentage=50))
        await session.flush()
        assert await publish_flag_definitions(session, redis) == 2
    reader = FlagReader(ttl=0)
    flags = await reader.flags_for(redis, org)
    assert flags["from-db"] is True
    assert flags["half"] == FlagDefinition("half", enabled=True, rollout_percentage=50).evaluate(
        org
    )


async def test_auth_republishes_definitions_redis_lost(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    acct = await signup(client)
    await _put(client, "beta", enabled=True)
    await redis.delete(FLAGS_DEFS_KEY)
    assert await FlagReader(ttl=0).flags_for(redis, uuid.uuid4()) == {}
    # auth notices on its next evaluation and writes them back for everyone
    assert (await client.get("/v1/auth/flags", headers=acct.headers)).json()["flags"] == {
        "beta": True
    }
    assert await FlagReader(ttl=0).flags_for(redis, uuid.uuid4()) == {"beta": True}
