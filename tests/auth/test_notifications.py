"""auth as a producer of notifications (libs/notify: a delivery job on the jobs service's
queue after the commit): a member invited or removed (to the organization's admins, not the
actor), a sign-in from a new device (to the account), an API key expiring within 7 days."""

from __future__ import annotations

import pickle
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.notify import Event
from services.auth.tasks import notify_expiring_keys
from tests.support.stacks.auth import PASSWORD, mail_token, signup


async def events(redis: Redis, kind: str) -> list[Event]:
    out = []
    for key in await redis.keys("arq:job:notify-*"):
        raw = await redis.get(key)
        if raw is not None:
            ev = Event.model_validate(pickle.loads(raw)["k"]["event"])
            if ev.kind == kind:
                out.append(ev)
    return out


async def test_invites_and_removals_are_told_to_the_organization(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    owner, bob = await signup(client), await signup(client)
    org = (await client.post("/v1/orgs", json={"name": "T"}, headers=owner.headers)).json()["id"]
    inv = await client.post(
        f"/v1/orgs/{org}/invites",
        json={"email": bob.email, "role": "member"},
        headers=owner.headers,
    )
    assert inv.status_code == 201
    (ev,) = await events(redis, "org.member.invited")
    assert (str(ev.org_id), ev.actor_id, ev.user_id) == (org, owner.user_id, None)
    assert ev.data["email"] == bob.email and ev.data["role"] == "member"

    # a refused invite tells nobody (nothing committed)
    again = await client.post(
        f"/v1/orgs/{org}/invites", json={"email": bob.email, "role": "owner"}, headers=bob.headers
    )
    assert again.status_code in (403, 404)
    assert len(await events(redis, "org.member.invited")) == 1

    token = await mail_token(redis, bob.email.lower(), "You are invited", "/accept-invite")
    joined = await client.post(
        "/v1/orgs/invites/accept", json={"token": token}, headers=bob.headers
    )
    assert joined.status_code == 200
    gone = await client.delete(f"/v1/orgs/{org}/members/{bob.user_id}", headers=owner.headers)
    assert gone.status_code == 204
    (ev,) = await events(redis, "org.member.removed")
    assert (str(ev.org_id), ev.actor_id) == (org, owner.user_id)
    assert (ev.data["user_id"], ev.data["email"]) == (str(bob.user_id), bob.email)


async def test_a_sign_in_from_a_new_device_is_told_to_the_account(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    alice = await signup(client)  # the first sign-in is no news
    assert await events(redis, "security.new_sign_in") == []
    body = {"email": alice.email, "password": PASSWORD}
    same = await client.post("/v1/auth/login", json=body)
    assert same.status_code == 200 and await events(redis, "security.new_sign_in") == []
    other = await client.post("/v1/auth/login", json=body, headers={"user-agent": "Firefox/140"})
    assert other.status_code == 200
    (ev,) = await events(redis, "security.new_sign_in")
    assert (ev.user_id, ev.org_id, ev.data["user_agent"]) == (alice.user_id, None, "Firefox/140")


async def test_keys_expiring_within_a_week_are_told_once(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    alice = await signup(client)
    soon = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    for name, when in (("soon", soon), ("later", later)):
        resp = await client.post(
            "/v1/api-keys",
            json={"name": name, "scopes": ["llm:use"], "expires_at": when},
            headers=alice.headers,
        )
        assert resp.status_code == 201, resp.text
    sessions = async_sessionmaker(bind=db, join_transaction_mode="create_savepoint")
    factory: async_sessionmaker[AsyncSession] = sessions
    # at least hers: the round also tells of keys other tests committed that expire soon
    assert await notify_expiring_keys(factory, redis) >= 1
    assert await notify_expiring_keys(factory, redis) >= 1  # the same event again: one job
    (ev,) = [e for e in await events(redis, "api_key.expiring") if e.org_id == alice.org_id]
    assert (ev.org_id, ev.user_id, ev.data["name"]) == (alice.org_id, alice.user_id, "soon")
    assert uuid.UUID(ev.data["api_key_id"])
