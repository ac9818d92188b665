from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.entitlements import Entitlements, Limits, publish
from services.auth.models import Membership
from tests.support.stacks.auth import Account, mail_token, signup


async def _team(client: httpx.AsyncClient, owner: Account, name: str = "Team") -> str:
    resp = await client.post("/v1/orgs", json={"name": name}, headers=owner.headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["role"] == "owner" and resp.json()["personal"] is False
    return str(resp.json()["id"])


async def _invite_and_join(
    client: httpx.AsyncClient, redis: Redis, org: str, admin: Account, who: Account, role: str
) -> None:
    inv = await client.post(
        f"/v1/orgs/{org}/invites", json={"email": who.email, "role": role}, headers=admin.headers
    )
    assert inv.status_code == 201, inv.text
    token = await mail_token(redis, who.email.lower(), "You are invited", "/accept-invite")
    joined = await client.post(
        "/v1/orgs/invites/accept", json={"token": token}, headers=who.headers
    )
    assert joined.status_code == 200, joined.text
    assert joined.json()["id"] == org and joined.json()["role"] == role


async def test_org_lifecycle_invites_roles_and_audit(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    owner, bob, carol = await signup(client), await signup(client), await signup(client)
    org = await _team(client, owner)
    listing = await client.get("/v1/orgs", headers=owner.headers)
    assert [o["personal"] for o in listing.json()["data"]] == [True, False]

    await _invite_and_join(client, redis, org, owner, bob, "member")
    # an invite is single use, and bound to its address
    inv = await client.post(
        f"/v1/orgs/{org}/invites",
        json={"email": carol.email, "role": "viewer"},
        headers=owner.headers,
    )
    token = await mail_token(redis, carol.email, "You are invited", "/accept-invite")
    wrong_person = await client.post(
        "/v1/orgs/invites/accept", json={"token": token}, headers=bob.headers
    )
    assert wrong_person.status_code == 403
    pending = await client.get(f"/v1/orgs/{org}/invites", headers=owner.headers)
    assert [i["id"] for i in pending.json()] == [inv.json()["id"]]
    ok = await client.post("/v1/orgs/invites/accept", json={"token": token}, headers=carol.headers)
    assert ok.status_code == 200
    again = await client.post(
        "/v1/orgs/invites/accept", json={"token": token}, headers=carol.headers
    )
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_token"
    dup = await client.post(
        f"/v1/orgs/{org}/invites", json={"email": bob.email}, headers=owner.headers
    )
    assert dup.status_code == 409

    members = (await client.get(f"/v1/orgs/{org}/members", headers=bob.headers)).json()
    assert {m["email"]: m["role"] for m in members["data"]} == {
        owner.email: "owner",
        bob.email: "member",
        carol.email: "viewer",
    }
    # members cannot change roles; admins cannot promote above themselves
    denied = await client.patch(
        f"/v1/orgs/{org}/members/{carol.user_id}", json={"role": "admin"}, headers=bob.headers
    )
    assert denied.status_code == 403
    promoted = await client.patch(
        f"/v1/orgs/{org}/members/{bob.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    too_high = await client.patch(
        f"/v1/orgs/{org}/members/{carol.user_id}", json={"role": "owner"}, headers=bob.headers
    )
    assert too_high.status_code == 403
    demote_owner = await client.patch(
        f"/v1/orgs/{org}/members/{owner.user_id}", json={"role": "member"}, headers=bob.headers
    )
    assert demote_owner.status_code == 403
    last_owner = await client.patch(
        f"/v1/orgs/{org}/members/{owner.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert last_owner.status_code == 409 and last_owner.json()["error"]["code"] == "last_owner"
    bad_role = await client.patch(
        f"/v1/orgs/{org}/members/{carol.user_id}", json={"role": "god"}, headers=owner.headers
    )
    assert bad_role.status_code == 422

    # admin removes a viewer; a member leaves by themselves
    removed = await client.delete(f"/v1/orgs/{org}/members/{carol.user_id}", headers=bob.headers)
    assert removed.status_code == 204
    assert (await client.get(f"/v1/orgs/{org}", headers=carol.headers)).status_code == 404
    leave_owner = await client.delete(
        f"/v1/orgs/{org}/members/{owner.user_id}", headers=owner.headers
    )
    assert leave_owner.status_code == 409

    # the audit log: admins only, filtered, paginated
    as_viewer = await client.get(f"/v1/orgs/{org}/audit", headers=carol.headers)
    assert as_viewer.status_code == 404
    log = await client.get(f"/v1/orgs/{org}/audit", headers=owner.headers)
    assert log.status_code == 200
    actions = [e["action"] for e in log.json()["data"]]
    assert actions[0] == "org.member.removed" and actions[-1] == "org.created"
    assert {"org.member.invited", "org.member.role_changed", "org.invite.accepted"} <= set(actions)
    changed = (
        await client.get(
            f"/v1/orgs/{org}/audit",
            params={"action": "org.member.role_changed"},
            headers=owner.headers,
        )
    ).json()["data"]
    assert len(changed) == 1 and changed[0]["details"] == {"from": "member", "to": "admin"}
    assert changed[0]["actor_user_id"] == str(owner.user_id)
    assert changed[0]["target_id"] == str(bob.user_id)
    by_bob = (
        await client.get(
            f"/v1/orgs/{org}/audit", params={"actor": str(bob.user_id)}, headers=owner.headers
        )
    ).json()["data"]
    assert {e["action"] for e in by_bob} == {"org.invite.accepted", "org.member.removed"}
    page = (
        await client.get(f"/v1/orgs/{org}/audit", params={"limit": 2}, headers=owner.headers)
    ).json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    none = (
        await client.get(f"/v1/orgs/{org}/audit", params={"since": future}, headers=owner.headers)
    ).json()
    assert none == {"data": [], "has_more": False}
    rid_filled = [e for e in log.json()["data"] if e["request_id"] and e["ip"]]
    assert len(rid_filled) == len(log.json()["data"])


async def test_tenant_isolation_every_id_route_answers_404(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    """A user of org A using org B's ids gets 404 everywhere, and nothing changes."""
    alice, mallory = await signup(client), await signup(client)
    b_org = await _team(client, alice, "B")
    key = await client.post(
        "/v1/api-keys", json={"name": "b", "scopes": ["llm:use"]}, headers=alice.headers
    )
    key_id = key.json()["id"]
    inv = await client.post(
        f"/v1/orgs/{b_org}/invites", json={"email": "x@example.com"}, headers=alice.headers
    )
    invite_id = inv.json()["id"]
    h = mallory.headers
    a = alice.user_id
    probes = [
        ("GET", f"/v1/orgs/{b_org}", None),
        ("GET", f"/v1/orgs/{alice.org_id}", None),
        ("GET", f"/v1/orgs/{b_org}/members", None),
        ("PATCH", f"/v1/orgs/{b_org}/members/{a}", {"role": "viewer"}),
        ("DELETE", f"/v1/orgs/{b_org}/members/{a}", None),
        ("POST", f"/v1/orgs/{b_org}/invites", {"email": "m@example.com"}),
        ("GET", f"/v1/orgs/{b_org}/invites", None),
        ("DELETE", f"/v1/orgs/{b_org}/invites/{invite_id}", None),
        ("GET", f"/v1/orgs/{b_org}/audit", None),
        ("GET", f"/v1/api-keys/{key_id}", None),
        ("DELETE", f"/v1/api-keys/{key_id}", None),
        ("DELETE", f"/v1/auth/sessions/{alice.session_id}", None),
        ("POST", "/v1/auth/switch-org", {"org_id": b_org}),
    ]
    for method, path, body in probes:
        resp = await client.request(method, path, json=body, headers=h)
        assert resp.status_code == 404, (method, path, resp.status_code, resp.text)
        assert set(resp.json()["error"]) >= {"code", "message", "request_id"}
        assert str(alice.email) not in resp.text
    # nothing changed: alice's key, session and membership are intact
    assert (await client.get(f"/v1/api-keys/{key_id}", headers=alice.headers)).json()[
        "revoked_at"
    ] is None
    assert (await client.get("/v1/auth/me", headers=alice.headers)).status_code == 200
    role = (
        await db.execute(
            select(Membership.role).where(
                Membership.org_id == uuid.UUID(b_org), Membership.user_id == alice.user_id
            )
        )
    ).scalar_one()
    assert role == "owner"
    # mallory's own key listing shows nothing of alice's
    assert (await client.get("/v1/api-keys", headers=h)).json()["data"] == []


async def test_withdrawn_invites_cannot_be_accepted(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    owner, guest = await signup(client), await signup(client)
    org = await _team(client, owner)
    inv = await client.post(
        f"/v1/orgs/{org}/invites",
        json={"email": guest.email, "role": "admin"},
        headers=owner.headers,
    )
    token = await mail_token(redis, guest.email, "You are invited", "/accept-invite")
    gone = await client.delete(f"/v1/orgs/{org}/invites/{inv.json()['id']}", headers=owner.headers)
    assert gone.status_code == 204
    assert (await client.get(f"/v1/orgs/{org}/invites", headers=owner.headers)).json() == []
    refused = await client.post(
        "/v1/orgs/invites/accept", json={"token": token}, headers=guest.headers
    )
    assert refused.status_code == 400
    assert (await client.get(f"/v1/orgs/{org}", headers=guest.headers)).status_code == 404


async def test_the_plans_seats_bound_who_joins(client: httpx.AsyncClient, redis: Redis) -> None:
    owner, bob, carol, dave = [await signup(client) for _ in range(4)]
    org = await _team(client, owner)
    await publish(redis, uuid.UUID(org), Entitlements(plan="duo", limits=Limits(seats=2)))
    tokens = {}
    for who in (bob, carol):  # invited while there is room
        inv = await client.post(
            f"/v1/orgs/{org}/invites", json={"email": who.email}, headers=owner.headers
        )
        assert inv.status_code == 201, inv.text
        tokens[who.email] = await mail_token(redis, who.email, "You are invited", "/accept-invite")
    joined = await client.post(
        "/v1/orgs/invites/accept", json={"token": tokens[bob.email]}, headers=bob.headers
    )
    assert joined.status_code == 200, joined.text

    # the seats are taken: the next to accept is refused, clearly, and stays outside
    full = await client.post(
        "/v1/orgs/invites/accept", json={"token": tokens[carol.email]}, headers=carol.headers
    )
    assert full.status_code == 403, full.text
    error = full.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "limit (seats) of 2 members (2 now) on the duo plan" in error["message"]
    assert error["details"] == {"limit": "seats", "max": 2, "current": 2, "plan": "duo"}
    assert (await client.get(f"/v1/orgs/{org}", headers=carol.headers)).status_code == 404
    # and no new invite goes out
    refused = await client.post(
        f"/v1/orgs/{org}/invites", json={"email": dave.email}, headers=owner.headers
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "quota_exceeded"

    # a larger plan: the invite still pending is accepted
    await publish(redis, uuid.UUID(org), Entitlements(plan="team", limits=Limits(seats=3)))
    ok = await client.post(
        "/v1/orgs/invites/accept", json={"token": tokens[carol.email]}, headers=carol.headers
    )
    assert ok.status_code == 200, ok.text
    members = await client.get(f"/v1/orgs/{org}/members", headers=owner.headers)
    assert len(members.json()["data"]) == 3
