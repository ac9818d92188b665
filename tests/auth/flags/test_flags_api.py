from __future__ import annotations

import asyncio
import uuid

import httpx
from redis.asyncio import Redis

from libs.identity import Principal
from libs.testing import Infra, auth_headers
from tests.support.stacks.auth import SERVICE, signup


async def test_flags_admin_api_and_cached_evaluation(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    acct = await signup(client)
    denied = await client.put(
        "/v1/admin/flags/new-ui", json={"enabled": True}, headers=acct.headers
    )
    assert denied.status_code == 403
    created = await client.put(
        "/v1/admin/flags/new-ui",
        json={"enabled": False, "org_overrides": {str(acct.org_id): True}},
        headers=SERVICE,
    )
    assert created.status_code == 201, created.text
    await client.put("/v1/admin/flags/beta", json={"enabled": True}, headers=SERVICE)
    mine = await client.get("/v1/auth/flags", headers=acct.headers)
    assert mine.status_code == 200
    assert mine.json() == {"org_id": str(acct.org_id), "flags": {"new-ui": True, "beta": True}}
    other = auth_headers(Principal(user_id=uuid.uuid4(), org_id=uuid.uuid4()))
    assert (await client.get("/v1/auth/flags", headers=other)).json()["flags"] == {
        "new-ui": False,
        "beta": True,
    }
    assert await redis.keys("aistack:flags:*:" + str(acct.org_id))

    # a change is visible at once (the cache is versioned)
    updated = await client.put("/v1/admin/flags/beta", json={"enabled": False}, headers=SERVICE)
    assert updated.status_code == 200 and updated.json()["enabled"] is False
    assert (await client.get("/v1/auth/flags", headers=acct.headers)).json()["flags"][
        "beta"
    ] is False
    assert (await client.delete("/v1/admin/flags/beta", headers=SERVICE)).status_code == 204
    assert (await client.get("/v1/admin/flags/beta", headers=SERVICE)).status_code == 404
    flags = (await client.get("/v1/auth/flags", headers=acct.headers)).json()["flags"]
    assert flags == {"new-ui": True}
    listing = await client.get("/v1/admin/flags", headers=SERVICE)
    assert [f["key"] for f in listing.json()["data"]] == ["new-ui"]
    bad_key = await client.put("/v1/admin/flags/Bad Key!", json={"enabled": True}, headers=SERVICE)
    assert bad_key.status_code == 422
    bad_pct = await client.put(
        "/v1/admin/flags/x", json={"enabled": True, "rollout_percentage": 101}, headers=SERVICE
    )
    assert bad_pct.status_code == 422


async def test_concurrent_puts_of_a_new_flag_each_answer_without_a_server_error(
    infra: Infra,
) -> None:
    # each request in its own transaction (the app's own pool): both may find no flag, and
    # the second insert hit the key's unique index, a 500 (found by the fuzz stage)
    from sqlalchemy import text

    from libs.db import make_engine
    from libs.testing import client_for
    from services.auth.app import build_app
    from tests.support.stacks.auth import auth_settings

    key = f"race-{uuid.uuid4().hex[:8]}"
    async with client_for(build_app(auth_settings(database_url=infra.database_url))) as c:
        answers = await asyncio.gather(
            *(
                c.put(f"/v1/admin/flags/{key}", json={"enabled": i % 2 == 0}, headers=SERVICE)
                for i in range(8)
            )
        )
        # and PUTs racing DELETEs of the same flag (an UPDATE of a row deleted meanwhile)
        raced = await asyncio.gather(
            *(
                c.put(f"/v1/admin/flags/{key}", json={"enabled": True}, headers=SERVICE)
                if i % 2
                else c.delete(f"/v1/admin/flags/{key}", headers=SERVICE)
                for i in range(12)
            )
        )
        assert all(r.status_code in (200, 201, 204, 404) for r in raced), [r.text for r in raced]
        await c.put(f"/v1/admin/flags/{key}", json={"enabled": True}, headers=SERVICE)
    engine = make_engine(infra.database_url)
    try:
        async with engine.begin() as conn:
            rows = await conn.execute(
                text("DELETE FROM auth.feature_flags WHERE key = :k"), {"k": key}
            )
    finally:
        await engine.dispose()
    assert sorted(a.status_code for a in answers)[-1] < 500, [a.text for a in answers]
    assert {a.status_code for a in answers} <= {200, 201}
    assert [a.status_code for a in answers].count(201) >= 1 and rows.rowcount == 1
