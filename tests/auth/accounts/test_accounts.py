from __future__ import annotations

import httpx
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import client_for
from services.auth.app import build_app
from services.auth.models import User
from tests.support.stacks.auth import (
    PASSWORD,
    audit_actions,
    auth_settings,
    login,
    mail_token,
    new_email,
    queued_mails,
    signup,
    token_in,
)


async def test_register_login_me(client: httpx.AsyncClient, db: AsyncConnection) -> None:
    email = new_email()
    acct = await signup(client, email.upper())  # stored and matched lower-cased
    assert acct.email == email.upper()
    assert acct.tokens["token_type"] == "Bearer" and acct.tokens["expires_in"] == 900
    assert acct.claims["roles"] == ["owner"]
    me = await client.get("/v1/auth/me", headers=acct.headers)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"]["email"] == email and body["user"]["email_verified_at"] is None
    assert body["org"]["id"] == str(acct.org_id) and body["org"]["personal"] is True
    assert body["session_id"] == str(acct.session_id)
    stored = (await db.execute(select(User.password_hash).where(User.email == email))).scalar_one()
    assert stored and stored.startswith("$argon2id$")
    actions = await audit_actions(db, actor_user_id=acct.user_id)
    assert actions == ["user.signed_up", "auth.login.succeeded"]


async def test_register_does_not_reveal_existing_accounts(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    acct = await signup(client)
    again = await client.post(
        "/v1/auth/register", json={"email": acct.email, "password": "another-Pass-99"}
    )
    fresh = await client.post(
        "/v1/auth/register", json={"email": new_email(), "password": "another-Pass-99"}
    )
    assert again.status_code == fresh.status_code == 202
    assert again.json() == fresh.json()
    # the owner of the address hears about it; the old password still works
    subjects = [m["subject"] for m in await queued_mails(redis) if m["to"] == acct.email]
    assert "Someone tried to sign up with your email" in subjects
    await login(client, acct.email)
    count = (await db.execute(select(User.id).where(User.email == acct.email))).all()
    assert len(count) == 1


async def test_weak_passwords_refused(client: httpx.AsyncClient, db: AsyncConnection) -> None:
    email = new_email()
    for pw in ("short1!", "password123", "aaaaaaaaaaaa", email):
        r = await client.post("/v1/auth/register", json={"email": email, "password": pw})
        assert r.status_code == 422, (pw, r.text)
        assert r.json()["error"]["code"] == "weak_password"
    assert (await db.execute(select(User.id).where(User.email == email))).first() is None


async def test_password_change_ends_other_sessions_and_notifies(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    a = await signup(client)
    b = await login(client, a.email)
    wrong = await client.post(
        "/v1/auth/password/change",
        json={"current_password": "not-it-at-all", "new_password": "Brand-new-pass-7"},
        headers=a.headers,
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_password"
    ok = await client.post(
        "/v1/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "Brand-new-pass-7"},
        headers=a.headers,
    )
    assert ok.status_code == 204, ok.text
    assert (await client.get("/v1/auth/me", headers=a.headers)).status_code == 200
    assert (await client.get("/v1/auth/me", headers=b.headers)).status_code == 401
    subjects = [m["subject"] for m in await queued_mails(redis) if m["to"] == a.email]
    assert "Your password was changed" in subjects
    await login(client, a.email, "Brand-new-pass-7")
    old = await client.post("/v1/auth/login", json={"email": a.email, "password": PASSWORD})
    assert old.status_code == 401
    assert "auth.password.changed" in await audit_actions(db, actor_user_id=a.user_id)


async def test_forgot_and_reset_password(
    client: httpx.AsyncClient, redis: Redis, db: AsyncConnection
) -> None:
    a = await signup(client)
    unknown = await client.post("/v1/auth/password/forgot", json={"email": new_email()})
    known = await client.post("/v1/auth/password/forgot", json={"email": a.email})
    assert unknown.status_code == known.status_code == 202
    assert unknown.json() == known.json()
    token = await mail_token(redis, a.email, "Reset your password", "/reset-password")

    weak = await client.post(
        "/v1/auth/password/reset", json={"token": token, "new_password": "password123"}
    )
    assert weak.status_code == 422
    ok = await client.post(
        "/v1/auth/password/reset", json={"token": token, "new_password": "Reset-pass-2026"}
    )
    assert ok.status_code == 204, ok.text
    # single use
    again = await client.post(
        "/v1/auth/password/reset", json={"token": token, "new_password": "Other-pass-2027"}
    )
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_token"
    # every session ended, new password works
    assert (await client.get("/v1/auth/me", headers=a.headers)).status_code == 401
    await login(client, a.email, "Reset-pass-2026")
    assert "auth.password.reset" in await audit_actions(db, actor_user_id=a.user_id)


async def test_verify_email(client: httpx.AsyncClient, redis: Redis) -> None:
    a = await signup(client)
    token = await mail_token(redis, a.email, "Confirm your email", "/verify-email")
    bad = await client.post("/v1/auth/verify-email", json={"token": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_token"
    assert (await client.post("/v1/auth/verify-email", json={"token": token})).status_code == 204
    me = (await client.get("/v1/auth/me", headers=a.headers)).json()
    assert me["user"]["email_verified_at"] is not None
    reused = await client.post("/v1/auth/verify-email", json={"token": token})
    assert reused.status_code == 400


async def test_authenticated_routes_need_a_user(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/auth/me")).status_code == 401
    body = (await client.get("/v1/auth/me")).json()
    assert body["error"]["code"] == "unauthorized"


async def test_resend_verification(client: httpx.AsyncClient, redis: Redis) -> None:
    acct = await signup(client)
    resent = await client.post("/v1/auth/verify-email/resend", headers=acct.headers)
    assert resent.status_code == 202
    mails = [m for m in await queued_mails(redis) if m["subject"] == "Confirm your email address"]
    tokens = {token_in(m["body"], "/verify-email") for m in mails}
    assert len(tokens) == 2
    # a new link retires the old one: exactly one of them works
    codes = [
        (await client.post("/v1/auth/verify-email", json={"token": t})).status_code for t in tokens
    ]
    assert sorted(codes) == [204, 400]
    # verified: nothing more is sent
    await client.post("/v1/auth/verify-email/resend", headers=acct.headers)
    assert len(await queued_mails(redis)) == len(mails)


async def test_sign_ups_and_reset_requests_are_capped_per_address(
    db: AsyncConnection, redis: Redis
) -> None:
    settings = auth_settings(public_requests_per_ip_per_hour=2)
    async with client_for(build_app(settings), connection=db) as c:
        ip = {"x-forwarded-for": "198.51.100.77"}
        for _ in range(2):
            r = await c.post(
                "/v1/auth/register", json={"email": new_email(), "password": PASSWORD}, headers=ip
            )
            assert r.status_code == 202
        capped = await c.post(
            "/v1/auth/register", json={"email": new_email(), "password": PASSWORD}, headers=ip
        )
        assert capped.status_code == 429 and int(capped.headers["retry-after"]) >= 1
        assert capped.json()["error"]["code"] == "rate_limited"
        other = {"x-forwarded-for": "198.51.100.78"}
        assert (
            await c.post(
                "/v1/auth/register",
                json={"email": new_email(), "password": PASSWORD},
                headers=other,
            )
        ).status_code == 202
        for expected in (202, 202, 429):
            r = await c.post("/v1/auth/password/forgot", json={"email": new_email()}, headers=ip)
            assert r.status_code == expected
