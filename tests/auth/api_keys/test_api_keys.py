from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.identity import Principal
from libs.testing import auth_headers
from services.auth.models import ApiKey, AuditEvent
from tests.support.stacks.auth import SERVICE, Account, signup


async def _create(client: httpx.AsyncClient, acct: Account, **body: object) -> dict[str, object]:
    payload: dict[str, object] = {"name": "ci", "scopes": ["llm:use", "rag:read"], **body}
    resp = await client.post("/v1/api-keys", json=payload, headers=acct.headers)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _introspect(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/internal/api-keys/introspect", json={"key": key}, headers=SERVICE)


async def test_create_list_get_introspect_revoke(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    acct = await signup(client)
    created = await _create(client, acct, rpm_limit=60, tpm_limit=10_000)
    key = str(created["key"])
    assert key.startswith("ask_") and len(key) == 44 and key[4:].isalnum()
    assert created["prefix"] == key[:12] and created["scopes"] == ["llm:use", "rag:read"]

    # stored as the sha256 hex of the full key, never in clear
    digest = hashlib.sha256(key.encode()).hexdigest()
    stored = (await db.execute(select(ApiKey.key_hash).where(ApiKey.id == created["id"]))).one()
    assert stored[0] == digest

    listing = await client.get("/v1/api-keys", headers=acct.headers)
    assert listing.status_code == 200
    assert key not in listing.text and digest not in listing.text
    [row] = listing.json()["data"]
    assert row["prefix"] == key[:12] and "key" not in row
    one = await client.get(f"/v1/api-keys/{created['id']}", headers=acct.headers)
    assert one.status_code == 200 and "key" not in one.json()

    info = await _introspect(client, key)
    assert info.status_code == 200, info.text
    assert info.json() == {
        "active": True,
        "key_id": created["id"],
        "org_id": str(acct.org_id),
        "user_id": str(acct.user_id),
        "scopes": ["llm:use", "rag:read"],
        "expires_at": None,
        "rpm_limit": 60,
        "tpm_limit": 10_000,
        "monthly_budget_usd": None,
        "plan": None,
    }
    used = await client.get(f"/v1/api-keys/{created['id']}", headers=acct.headers)
    assert used.json()["last_used_at"] is not None

    # the gateway's cache entry and in-process caches must go at once
    await redis.set(f"aistack:apikey:{digest}", b"cached")
    pubsub = redis.pubsub()
    await pubsub.subscribe("aistack:apikey:revoked")
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    revoked = await client.delete(f"/v1/api-keys/{created['id']}", headers=acct.headers)
    assert revoked.status_code == 204
    msg = None
    for _ in range(20):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg:
            break
    await pubsub.aclose()
    assert msg is not None and msg["data"] == digest.encode()
    assert not await redis.exists(f"aistack:apikey:{digest}")

    assert (await _introspect(client, key)).json() == {"active": False}
    assert (await client.get("/v1/api-keys", headers=acct.headers)).json()["data"] == []
    with_revoked = await client.get(
        "/v1/api-keys", params={"include_revoked": "true"}, headers=acct.headers
    )
    assert with_revoked.json()["data"][0]["revoked_at"] is not None
    # revoking twice is fine
    again = await client.delete(f"/v1/api-keys/{created['id']}", headers=acct.headers)
    assert again.status_code == 204
    actions = (
        await db.execute(select(AuditEvent.action).where(AuditEvent.org_id == acct.org_id))
    ).scalars()
    assert {"api_key.created", "api_key.revoked"} <= set(actions)


async def test_introspection_of_unknown_expired_and_malformed_keys(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    acct = await signup(client)
    soon = datetime.now(UTC) + timedelta(hours=1)
    created = await _create(client, acct, expires_at=soon.isoformat())
    assert (await _introspect(client, str(created["key"]))).json()["active"] is True
    await db.execute(
        update(ApiKey)
        .where(ApiKey.id == uuid.UUID(str(created["id"])))
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    assert (await _introspect(client, str(created["key"]))).json() == {"active": False}
    for bogus in ("ask_" + "a" * 40, "nope", "ask_" + "!" * 40, ""):
        assert (await _introspect(client, bogus)).json() == {"active": False}


async def test_introspection_is_for_the_platform_only(client: httpx.AsyncClient) -> None:
    acct = await signup(client)
    created = await _create(client, acct)
    as_user = await client.post(
        "/internal/api-keys/introspect", json={"key": created["key"]}, headers=acct.headers
    )
    assert as_user.status_code == 403
    anonymous = await client.post("/internal/api-keys/introspect", json={"key": created["key"]})
    assert anonymous.status_code == 401


async def test_scopes_are_validated_and_bounded_by_role(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    acct = await signup(client)
    unknown = await client.post(
        "/v1/api-keys", json={"name": "x", "scopes": ["llm:use", "root"]}, headers=acct.headers
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "validation_error"
    past = await client.post(
        "/v1/api-keys",
        json={"name": "x", "scopes": ["llm:use"], "expires_at": "2000-01-01T00:00:00Z"},
        headers=acct.headers,
    )
    assert past.status_code == 422
    naive = await client.post(
        "/v1/api-keys",
        json={"name": "x", "scopes": ["llm:use"], "expires_at": "2999-01-01T00:00:00"},
        headers=acct.headers,
    )
    assert naive.status_code == 422
    # a member cannot mint an admin key; a viewer cannot mint keys
    from services.auth.models import Membership

    await db.execute(
        update(Membership).where(Membership.user_id == acct.user_id).values(role="member")
    )
    beyond = await client.post(
        "/v1/api-keys", json={"name": "x", "scopes": ["admin"]}, headers=acct.headers
    )
    assert beyond.status_code == 403 and beyond.json()["error"]["code"] == "scope_not_allowed"
    await db.execute(
        update(Membership).where(Membership.user_id == acct.user_id).values(role="viewer")
    )
    viewer = await client.post(
        "/v1/api-keys", json={"name": "x", "scopes": ["rag:read"]}, headers=acct.headers
    )
    assert viewer.status_code == 403
    assert (await db.execute(select(ApiKey.id).where(ApiKey.org_id == acct.org_id))).all() == []


async def test_api_key_principals_cannot_manage_keys(client: httpx.AsyncClient) -> None:
    acct = await signup(client)
    as_key = auth_headers(
        Principal(user_id=acct.user_id, org_id=acct.org_id, key_id=uuid.uuid4(), scopes=["admin"])
    )
    resp = await client.post(
        "/v1/api-keys", json={"name": "x", "scopes": ["llm:use"]}, headers=as_key
    )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "user_required"


async def test_last_used_written_at_most_once_a_minute(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    acct = await signup(client)
    created = await _create(client, acct)
    await _introspect(client, str(created["key"]))
    first = (
        await db.execute(select(ApiKey.last_used_at).where(ApiKey.id == created["id"]))
    ).scalar_one()
    await asyncio.sleep(0.01)
    await _introspect(client, str(created["key"]))
    second = (
        await db.execute(select(ApiKey.last_used_at).where(ApiKey.id == created["id"]))
    ).scalar_one()
    assert first is not None and first == second


async def test_a_keys_monthly_budget_is_set_changed_and_introspected(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    acct = await signup(client)
    created = await _create(client, acct, monthly_budget_usd="12.5")
    assert created["monthly_budget_usd"] == "12.5"
    key, key_id = str(created["key"]), created["id"]
    assert (await _introspect(client, key)).json()["monthly_budget_usd"] == "12.5"

    # changed: the gateway's cached introspection is dropped, so the next call sees it
    digest = hashlib.sha256(key.encode()).hexdigest()
    await redis.set(f"aistack:apikey:{digest}", b"cached")
    changed = await client.patch(
        f"/v1/api-keys/{key_id}", json={"monthly_budget_usd": 3}, headers=acct.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["monthly_budget_usd"] == "3" and changed.json()["name"] == "ci"
    assert not await redis.exists(f"aistack:apikey:{digest}")
    one = await client.get(f"/v1/api-keys/{key_id}", headers=acct.headers)
    assert one.json()["monthly_budget_usd"] == "3"
    assert (await _introspect(client, key)).json()["monthly_budget_usd"] == "3"
    # only the fields sent change; null clears the budget
    renamed = await client.patch(
        f"/v1/api-keys/{key_id}", json={"name": "prod"}, headers=acct.headers
    )
    assert renamed.json()["monthly_budget_usd"] == "3" and renamed.json()["name"] == "prod"
    cleared = await client.patch(
        f"/v1/api-keys/{key_id}", json={"monthly_budget_usd": None}, headers=acct.headers
    )
    assert cleared.json()["monthly_budget_usd"] is None
    assert (await _introspect(client, key)).json()["monthly_budget_usd"] is None
    actions = (
        await db.execute(select(AuditEvent.action).where(AuditEvent.target_id == key_id))
    ).scalars()
    assert "api_key.updated" in set(actions)

    # bad input: a clear 422, nothing changed
    for body in (
        {"monthly_budget_usd": -1},
        {"monthly_budget_usd": "0.000000001"},
        {"monthly_budget_usd": "1e12"},
        {"name": None},
        {"plan": "free"},
    ):
        bad = await client.patch(f"/v1/api-keys/{key_id}", json=body, headers=acct.headers)
        assert bad.status_code == 422, (body, bad.text)
        assert bad.json()["error"]["code"] == "validation_error"
    after = await client.get(f"/v1/api-keys/{key_id}", headers=acct.headers)
    assert after.json()["name"] == "prod" and after.json()["monthly_budget_usd"] is None
    missing = await client.patch(
        f"/v1/api-keys/{uuid.uuid4()}", json={"name": "x"}, headers=acct.headers
    )
    assert missing.status_code == 404
    # a revoked key is not changed
    await client.delete(f"/v1/api-keys/{key_id}", headers=acct.headers)
    gone = await client.patch(f"/v1/api-keys/{key_id}", json={"name": "x"}, headers=acct.headers)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "api_key_revoked"
