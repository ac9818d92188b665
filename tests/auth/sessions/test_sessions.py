from __future__ import annotations

import uuid

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auth.sessions.revocations import SESSION_REVOKED_PREFIX
from tests.support.stacks.auth import (
    PASSWORD,
    account_from,
    audit_actions,
    login,
    new_email,
    signup,
)


async def test_login_failures_look_the_same(client: httpx.AsyncClient, db: AsyncConnection) -> None:
    acct = await signup(client)
    wrong = await client.post(
        "/v1/auth/login", json={"email": acct.email, "password": "Wrong-password-1"}
    )
    unknown = await client.post(
        "/v1/auth/login", json={"email": new_email(), "password": "Wrong-password-1"}
    )
    assert wrong.status_code == unknown.status_code == 401
    w, u = wrong.json()["error"], unknown.json()["error"]
    assert (
        (w["code"], w["message"])
        == (u["code"], u["message"])
        == (
            "invalid_credentials",
            "Invalid email or password",
        )
    )
    assert set(wrong.headers) - {"x-request-id", "content-length"} == set(unknown.headers) - {
        "x-request-id",
        "content-length",
    }
    # the failure is audited although the request failed
    assert "auth.login.failed" in await audit_actions(db, actor_user_id=acct.user_id)


async def test_refresh_rotates_and_reuse_revokes_the_family(
    client: httpx.AsyncClient, db: AsyncConnection, redis: Redis
) -> None:
    acct = await signup(client)
    first = acct.tokens["refresh_token"]
    r1 = await client.post("/v1/auth/refresh", json={"refresh_token": first})
    assert r1.status_code == 200, r1.text
    second = r1.json()["refresh_token"]
    assert second != first and r1.json()["session_id"] == str(acct.session_id)
    refreshed = await account_from(client, acct.email, PASSWORD, r1.json())
    assert refreshed.claims["jti"] != acct.claims["jti"]

    # the rotated token comes back: the whole family dies
    reuse = await client.post("/v1/auth/refresh", json={"refresh_token": first})
    assert reuse.status_code == 401
    assert reuse.json()["error"]["code"] == "refresh_token_reused"
    dead = await client.post("/v1/auth/refresh", json={"refresh_token": second})
    assert dead.status_code == 401 and dead.json()["error"]["code"] == "invalid_refresh_token"
    me = await client.get("/v1/auth/me", headers=refreshed.headers)
    assert me.status_code == 401 and me.json()["error"]["code"] == "session_revoked"
    assert "auth.refresh_token.reused" in await audit_actions(db, actor_user_id=acct.user_id)
    # gateways learn that the session's access tokens are dead
    assert await redis.exists(f"{SESSION_REVOKED_PREFIX}{acct.session_id}")

    # another device's session is untouched
    other = await login(client, acct.email)
    assert (await client.get("/v1/auth/me", headers=other.headers)).status_code == 200

    bogus = await client.post("/v1/auth/refresh", json={"refresh_token": "rt_nope"})
    assert bogus.status_code == 401 and bogus.json()["error"]["code"] == "invalid_refresh_token"


async def test_sessions_logout_and_logout_all(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    email = new_email()
    a = await signup(client, email)
    b = await login(client, email)
    c = await login(client, email)
    listing = await client.get("/v1/auth/sessions", headers=a.headers)
    assert listing.status_code == 200
    rows = listing.json()["data"]
    assert {r["id"] for r in rows} == {str(a.session_id), str(b.session_id), str(c.session_id)}
    assert [r["current"] for r in rows if r["id"] == str(a.session_id)] == [True]

    # end one session from another
    assert (
        await client.delete(f"/v1/auth/sessions/{c.session_id}", headers=a.headers)
    ).status_code == 204
    assert (await client.get("/v1/auth/me", headers=c.headers)).status_code == 401
    gone = await client.post("/v1/auth/refresh", json={"refresh_token": c.tokens["refresh_token"]})
    assert gone.status_code == 401
    assert (
        await client.delete(f"/v1/auth/sessions/{uuid.uuid4()}", headers=a.headers)
    ).status_code == 404

    # logout ends only this session
    assert (await client.post("/v1/auth/logout", headers=b.headers)).status_code == 204
    assert (await client.get("/v1/auth/me", headers=b.headers)).status_code == 401
    assert (await client.get("/v1/auth/me", headers=a.headers)).status_code == 200

    d = await login(client, email)
    assert (await client.post("/v1/auth/logout-all", headers=a.headers)).status_code == 204
    for acct in (a, d):
        assert (await client.get("/v1/auth/me", headers=acct.headers)).status_code == 401
        r = await client.post(
            "/v1/auth/refresh", json={"refresh_token": acct.tokens["refresh_token"]}
        )
        assert r.status_code == 401
    actions = await audit_actions(db, actor_user_id=a.user_id)
    assert {"auth.session.ended", "auth.logout", "auth.logout_all"} <= set(actions)


async def test_switch_org_carries_the_org_in_new_tokens(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    team = await client.post("/v1/orgs", json={"name": "Team"}, headers=a.headers)
    assert team.status_code == 201, team.text
    team_id = team.json()["id"]
    sw = await client.post("/v1/auth/switch-org", json={"org_id": team_id}, headers=a.headers)
    assert sw.status_code == 200, sw.text
    switched = await account_from(client, a.email, PASSWORD, sw.json())
    assert str(switched.org_id) == team_id and switched.session_id == a.session_id
    # the refresh token from before the switch is retired (not a reuse: the session lives)
    old = await client.post("/v1/auth/refresh", json={"refresh_token": a.tokens["refresh_token"]})
    assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_refresh_token"
    r = await client.post(
        "/v1/auth/refresh", json={"refresh_token": switched.tokens["refresh_token"]}
    )
    assert r.status_code == 200 and r.json()["org_id"] == team_id
    # an org the user is not in
    other = await signup(client)
    no = await client.post(
        "/v1/auth/switch-org", json={"org_id": str(other.org_id)}, headers=a.headers
    )
    assert no.status_code == 404
    # login straight into the team org
    direct = await login(client, a.email, org_id=team_id)
    assert str(direct.org_id) == team_id
