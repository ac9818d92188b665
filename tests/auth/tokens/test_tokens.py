from __future__ import annotations

import time

import httpx
import jwt
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.identity import Principal
from libs.testing import auth_headers
from services.auth.models import SigningKey, User
from tests.support.stacks.auth import SERVICE, login, signup, verify_access_token


async def test_access_token_claims_contract(client: httpx.AsyncClient) -> None:
    acct = await signup(client)
    header = jwt.get_unverified_header(acct.tokens["access_token"])
    assert header["alg"] == "EdDSA" and header["kid"]
    c = acct.claims
    assert c["iss"] == "aistack" and c["aud"] == "aistack-api"
    assert c["sub"] == str(acct.user_id) and c["org"] == str(acct.org_id)
    assert c["roles"] == ["owner"] and c["sid"] == acct.tokens["session_id"]
    assert c["nbf"] == c["iat"] and c["exp"] - c["iat"] == 900
    assert abs(c["iat"] - time.time()) < 30 and len(c["jti"]) >= 16


async def test_jwks_publishes_the_signing_key_only(client: httpx.AsyncClient) -> None:
    acct = await signup(client)
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    assert "max-age" in resp.headers["cache-control"]
    keys = resp.json()["keys"]
    kid = jwt.get_unverified_header(acct.tokens["access_token"])["kid"]
    assert [k["kid"] for k in keys] == [kid]
    assert keys[0] == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": keys[0]["x"],
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    }
    assert "d" not in keys[0]


async def test_tampered_or_foreign_tokens_do_not_verify(client: httpx.AsyncClient) -> None:
    acct = await signup(client)
    token = acct.tokens["access_token"]
    head, _payload, sig = token.split(".")
    claims = dict(acct.claims, org="00000000-0000-0000-0000-000000000000")
    forged = ".".join(
        [head, jwt.utils.base64url_encode(jwt.api_jws.json.dumps(claims).encode()).decode(), sig]
    )
    with pytest.raises(jwt.InvalidSignatureError):
        await verify_access_token(client, forged)


async def test_rotation_keeps_old_tokens_valid(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    acct = await signup(client)
    old_kid = jwt.get_unverified_header(acct.tokens["access_token"])["kid"]

    # only platform admins (or the platform itself) rotate
    denied = await client.post("/v1/admin/signing-keys/rotate", headers=acct.headers)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "platform_admin_required"

    rotated = await client.post("/v1/admin/signing-keys/rotate", headers=SERVICE)
    assert rotated.status_code == 201, rotated.text
    new_kid = rotated.json()["kid"]
    assert new_kid != old_kid and rotated.json()["status"] == "active"

    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    # the token signed before the rotation still verifies
    await verify_access_token(client, acct.tokens["access_token"])
    # new tokens are signed by the new key
    fresh = await login(client, acct.email)
    assert jwt.get_unverified_header(fresh.tokens["access_token"])["kid"] == new_kid

    listing = await client.get("/v1/admin/signing-keys", headers=SERVICE)
    by_kid = {k["kid"]: k for k in listing.json()["data"]}
    assert by_kid[old_kid]["status"] == "retiring" and by_kid[old_kid]["retire_after"]
    assert "private_key_enc" not in listing.text

    # once its tokens have expired, the old key leaves the JWKS
    await db.execute(
        update(SigningKey)
        .where(SigningKey.kid == old_kid)
        .values(retire_after=SigningKey.created_at)
    )
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]


async def test_platform_admin_user_can_rotate(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    acct = await signup(client)
    await db.execute(update(User).where(User.id == acct.user_id).values(is_platform_admin=True))
    resp = await client.post("/v1/admin/signing-keys/rotate", headers=acct.headers)
    assert resp.status_code == 201
    # an API key principal is never a platform admin
    key_principal = Principal(
        user_id=acct.user_id, org_id=acct.org_id, key_id=acct.session_id, scopes=["admin"]
    )
    denied = await client.post("/v1/admin/signing-keys/rotate", headers=auth_headers(key_principal))
    assert denied.status_code == 403


async def test_private_keys_are_encrypted_at_rest(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    await signup(client)
    row = (await db.execute(select(SigningKey.private_key_enc, SigningKey.public_key))).first()
    assert row is not None
    private_enc, public = row
    assert len(public) == 32 and len(private_enc) > 64  # a Fernet token, not 32 raw bytes
