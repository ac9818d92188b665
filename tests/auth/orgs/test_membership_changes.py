"""What a membership change does beyond the membership: the keys a removed member created
there are revoked (as if deleted by hand), and sessions carrying a membership that ended or
lost rights end at once (gateways refuse their access tokens; no waiting for a refresh)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auth.models import ApiKey
from tests.support.stacks.auth import SERVICE, Account, account_from, login, mail_token, signup


async def _team(client: httpx.AsyncClient, owner: Account) -> uuid.UUID:
    resp = await client.post("/v1/orgs", json={"name": "Team"}, headers=owner.headers)
    assert resp.status_code == 201, resp.text
    return uuid.UUID(resp.json()["id"])


async def _join(
    client: httpx.AsyncClient, redis: Redis, org: uuid.UUID, admin: Account, who: Account, role: str
) -> Account:
    """``who`` joins ``org`` with ``role`` and switches their session to it."""
    inv = await client.post(
        f"/v1/orgs/{org}/invites", json={"email": who.email, "role": role}, headers=admin.headers
    )
    assert inv.status_code == 201, inv.text
    token = await mail_token(redis, who.email.lower(), "You are invited", "/accept-invite")
    joined = await client.post(
        "/v1/orgs/invites/accept", json={"token": token}, headers=who.headers
    )
    assert joined.status_code == 200, joined.text
    return await _switch(client, who, org)


async def _switch(client: httpx.AsyncClient, who: Account, org: uuid.UUID) -> Account:
    switched = await client.post(
        "/v1/auth/switch-org", json={"org_id": str(org)}, headers=who.headers
    )
    assert switched.status_code == 200, switched.text
    acct = await account_from(client, who.email, who.password, switched.json())
    assert acct.org_id == org
    return acct


async def _key(client: httpx.AsyncClient, acct: Account, name: str) -> tuple[str, str]:
    resp = await client.post(
        "/v1/api-keys", json={"name": name, "scopes": ["llm:use"]}, headers=acct.headers
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"]), str(resp.json()["key"])


async def _active(client: httpx.AsyncClient, key: str) -> bool:
    resp = await client.post("/internal/api-keys/introspect", json={"key": key}, headers=SERVICE)
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


async def test_removing_a_member_revokes_the_keys_they_created_there(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    owner, bob = await signup(client), await signup(client)
    team = await _team(client, owner)
    owner_in_team = await _switch(client, owner, team)
    bob_personal = bob
    bob = await _join(client, redis, team, owner, bob, "member")
    bob_id, bob_key = await _key(client, bob, "bob's")
    bob_id2, _ = await _key(client, bob, "bob's second")
    _, owner_key = await _key(client, owner_in_team, "owner's")
    # bob's key in his own organization is not the team's business
    own_personal = await _switch(client, bob, bob_personal.org_id)
    _, personal_key = await _key(client, own_personal, "personal")
    # one of bob's team keys was already revoked by hand: not revoked (or audited) twice
    gone = await client.delete(f"/v1/api-keys/{bob_id2}", headers=owner_in_team.headers)
    assert gone.status_code == 204
    assert all([await _active(client, k) for k in (bob_key, owner_key, personal_key)])

    digest = hashlib.sha256(bob_key.encode()).hexdigest()
    await redis.set(f"aistack:apikey:{digest}", b"cached")  # as the gateway caches it
    pubsub = redis.pubsub()
    await pubsub.subscribe("aistack:apikey:revoked")
    await pubsub.get_message(timeout=1)
    removed = await client.delete(
        f"/v1/orgs/{team}/members/{bob.user_id}", headers=owner_in_team.headers
    )
    assert removed.status_code == 204, removed.text
    announced = []
    for _ in range(20):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg:
            announced.append(msg["data"])
    await pubsub.aclose()

    assert announced == [digest.encode()]
    assert not await redis.exists(f"aistack:apikey:{digest}")
    assert not await _active(client, bob_key)
    assert await _active(client, owner_key) and await _active(client, personal_key)
    revoked_at = (
        await db.execute(select(ApiKey.revoked_at).where(ApiKey.id == uuid.UUID(bob_id)))
    ).scalar_one()
    assert revoked_at is not None

    audit = await client.get(
        f"/v1/orgs/{team}/audit", params={"action": "api_key.revoked"}, headers=owner.headers
    )
    by_target = {e["target_id"]: e for e in audit.json()["data"]}
    assert set(by_target) == {bob_id, bob_id2}
    event = by_target[bob_id]
    assert event["details"] == {"name": "bob's", "prefix": bob_key[:12], "reason": "member_removed"}
    assert event["actor_user_id"] == str(owner.user_id)
    assert "reason" not in by_target[bob_id2]["details"]


async def test_leaving_revokes_the_keys_one_created_there(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    owner, carol = await signup(client), await signup(client)
    team = await _team(client, owner)
    carol = await _join(client, redis, team, owner, carol, "admin")
    _, key = await _key(client, carol, "carol's")
    assert await _active(client, key)
    left = await client.delete(f"/v1/orgs/{team}/members/{carol.user_id}", headers=carol.headers)
    assert left.status_code == 204, left.text
    assert not await _active(client, key)
    audit = await client.get(
        f"/v1/orgs/{team}/audit", params={"action": "api_key.revoked"}, headers=owner.headers
    )
    [event] = audit.json()["data"]
    assert event["details"]["reason"] == "member_removed"
    assert event["actor_user_id"] == str(carol.user_id)
    # the session that carried the team ended with the membership
    me = await client.get("/v1/auth/me", headers=carol.headers)
    assert me.status_code == 401 and me.json()["error"]["code"] == "session_revoked"


async def _announced(pubsub: Any) -> list[str]:
    out = []
    for _ in range(10):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg:
            out.append(msg["data"].decode())
    return out


async def _session_state(
    client: httpx.AsyncClient, redis: Redis, acct: Account
) -> tuple[bool, int, int]:
    """(revoked marker set for the gateways, /me status, refresh status)"""
    marked = bool(await redis.exists(f"aistack:auth:session-revoked:{acct.session_id}"))
    me = await client.get("/v1/auth/me", headers=acct.headers)
    refreshed = await client.post(
        "/v1/auth/refresh", json={"refresh_token": acct.tokens["refresh_token"]}
    )
    return marked, me.status_code, refreshed.status_code


async def test_removal_ends_the_members_sessions_in_that_org_at_once(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    owner, bob = await signup(client), await signup(client)
    team = await _team(client, owner)
    owner_in_team = await _switch(client, owner, team)
    bob_in_team = await _join(client, redis, team, owner, bob, "member")
    bob_elsewhere = await login(client, bob.email)  # another device, personal workspace
    assert bob_elsewhere.org_id != team

    pubsub = redis.pubsub()
    await pubsub.subscribe("aistack:auth:session-revoked")
    await pubsub.get_message(timeout=1)
    removed = await client.delete(
        f"/v1/orgs/{team}/members/{bob.user_id}", headers=owner_in_team.headers
    )
    assert removed.status_code == 204
    assert await _announced(pubsub) == [str(bob_in_team.session_id)]
    await pubsub.aclose()

    ttl = await redis.ttl(f"aistack:auth:session-revoked:{bob_in_team.session_id}")
    assert 900 <= ttl <= 960  # the access tokens' lifetime and a margin
    assert await _session_state(client, redis, bob_in_team) == (True, 401, 401)
    # the session in his own workspace is not the team's business
    assert await _session_state(client, redis, bob_elsewhere) == (False, 200, 200)
    audit = await client.get(
        f"/v1/orgs/{team}/audit", params={"action": "org.member.removed"}, headers=owner.headers
    )
    assert audit.json()["data"][0]["details"] == {"sessions_ended": 1}


async def test_a_downgrade_ends_the_sessions_in_that_org_an_upgrade_does_not(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    owner, dave = await signup(client), await signup(client)
    team = await _team(client, owner)
    dave = await _join(client, redis, team, owner, dave, "member")
    assert dave.claims["roles"] == ["member"]

    up = await client.patch(
        f"/v1/orgs/{team}/members/{dave.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert up.status_code == 200
    assert not await redis.exists(f"aistack:auth:session-revoked:{dave.session_id}")
    assert (await client.get("/v1/auth/me", headers=dave.headers)).status_code == 200
    # the new rights come with the next refresh
    refreshed = await client.post(
        "/v1/auth/refresh", json={"refresh_token": dave.tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200
    dave = await account_from(client, dave.email, dave.password, refreshed.json())
    assert dave.claims["roles"] == ["admin"]

    down = await client.patch(
        f"/v1/orgs/{team}/members/{dave.user_id}", json={"role": "viewer"}, headers=owner.headers
    )
    assert down.status_code == 200 and down.json()["role"] == "viewer"
    assert await _session_state(client, redis, dave) == (True, 401, 401)
    # signing in again gives tokens with the new role
    again = await login(client, dave.email, org_id=str(team))
    assert again.org_id == team and again.claims["roles"] == ["viewer"]

    changes = await client.get(
        f"/v1/orgs/{team}/audit",
        params={"action": "org.member.role_changed"},
        headers=owner.headers,
    )
    assert [e["details"] for e in changes.json()["data"]] == [
        {"from": "admin", "to": "viewer", "sessions_ended": 1},
        {"from": "member", "to": "admin"},
    ]
