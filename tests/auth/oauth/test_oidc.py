"""Sign-in with OpenID Connect, end to end against a real OpenID Provider (oidc-provider,
OpenID certified) that the test runs under node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import client_for
from services.auth.app import build_app
from services.auth.models import Identity, User
from services.auth.oauth.providers import OIDCClient, _Cached
from services.auth.settings import OIDCProvider
from services.auth.tokens.keys import b64url
from tests.support.stacks.auth import PASSWORD, account_from, auth_settings, new_email, signup

OIDC_DIR = Path(__file__).parent / "oidc"
CLIENT_ID = "aistack-test"
CLIENT_SECRET = "test-client-secret-0123456789-abcdef"
BASE = "http://test"
CALLBACK = f"{BASE}/v1/auth/oauth/local/callback"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
async def op_issuer() -> AsyncIterator[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the OIDC tests run a real OpenID Provider on it")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").exists():
        npm = await asyncio.create_subprocess_exec(
            "npm", "ci", "--no-audit", "--no-fund", cwd=OIDC_DIR
        )
        assert await npm.wait() == 0, "npm ci failed in tests/auth/oauth/oidc"
    port = _free_port()
    clients = [
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [CALLBACK],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        }
    ]
    proc = await asyncio.create_subprocess_exec(
        node,
        "provider.mjs",
        cwd=OIDC_DIR,
        env={**os.environ, "PORT": str(port), "OIDC_CLIENTS": json.dumps(clients)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(b"ready "), line
    yield line.decode().split()[1]
    proc.terminate()
    await proc.wait()


@pytest.fixture
async def sso(
    op_issuer: str, db: AsyncConnection, redis: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    settings = auth_settings(
        public_url=BASE,
        oidc_providers={
            "local": OIDCProvider(
                issuer=op_issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
            )
        },
    )
    async with client_for(build_app(settings), connection=db, base_url=BASE) as c:
        yield c


async def _browser_to_callback(start: str) -> str:
    """Follow the provider's redirects like a browser until it sends us back."""
    async with httpx.AsyncClient(timeout=10) as browser:
        url = start
        for _ in range(20):
            resp = await browser.get(url)
            assert resp.status_code in (302, 303), (resp.status_code, resp.text[:300])
            url = str(httpx.URL(url).join(resp.headers["location"]))
            if url.startswith(BASE):
                return url
    raise AssertionError("the provider never redirected back")


async def _sign_in(sso: httpx.AsyncClient, email: str) -> httpx.Response:
    start = await sso.get("/v1/auth/oauth/local/authorize", params={"login_hint": email})
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    q = parse_qs(urlsplit(location).query)
    assert q["code_challenge_method"] == ["S256"] and q["redirect_uri"] == [CALLBACK]
    assert q["state"] and q["nonce"] and q["scope"] == ["openid email profile"]
    callback = await _browser_to_callback(location)
    return await sso.get(callback)


async def test_new_account_by_oidc_then_the_same_account_again(
    sso: httpx.AsyncClient, db: AsyncConnection
) -> None:
    listed = await sso.get("/v1/auth/oauth/providers")
    assert listed.json() == {"data": [{"name": "local", "kind": "oidc"}]}
    email = new_email()
    first = await _sign_in(sso, email)
    assert first.status_code == 200, first.text
    acct = await account_from(sso, email, "", first.json())
    me = (await sso.get("/v1/auth/me", headers=acct.headers)).json()
    assert me["user"]["email"] == email and me["user"]["email_verified_at"] is not None
    assert me["org"]["personal"] is True
    again = await _sign_in(sso, email)
    assert again.status_code == 200
    assert (await account_from(sso, email, "", again.json())).user_id == acct.user_id
    idents = (
        await db.execute(select(Identity.provider).where(Identity.user_id == acct.user_id))
    ).all()
    assert [i[0] for i in idents] == ["local"]
    # no password was set: password sign-in is impossible
    pw = await sso.post("/v1/auth/login", json={"email": email, "password": "anything-at-all"})
    assert pw.status_code == 401


async def test_links_an_existing_account_by_verified_email(
    sso: httpx.AsyncClient, db: AsyncConnection
) -> None:
    owner = await signup(sso)
    # the owner proved the address before: linking keeps their password
    await db.execute(
        update(User).where(User.id == owner.user_id).values(email_verified_at=User.created_at)
    )
    resp = await _sign_in(sso, owner.email)
    assert resp.status_code == 200, resp.text
    assert (await account_from(sso, owner.email, "", resp.json())).user_id == owner.user_id
    pw = await sso.post("/v1/auth/login", json={"email": owner.email, "password": PASSWORD})
    assert pw.status_code == 200


async def test_claiming_an_unverified_account_drops_the_squatter(
    sso: httpx.AsyncClient,
) -> None:
    squatter = await signup(sso)  # registered someone else's address, never verified it
    resp = await _sign_in(sso, squatter.email)
    assert resp.status_code == 200
    assert (await sso.get("/v1/auth/me", headers=squatter.headers)).status_code == 401
    pw = await sso.post("/v1/auth/login", json={"email": squatter.email, "password": PASSWORD})
    assert pw.status_code == 401


async def test_unverified_provider_email_does_not_take_over(sso: httpx.AsyncClient) -> None:
    email = "unverified-" + new_email()
    await signup(sso, email)
    resp = await _sign_in(sso, email)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "email_in_use"
    # a fresh unverified address makes an account whose email stays unconfirmed
    other = "unverified-" + new_email()
    made = await _sign_in(sso, other)
    assert made.status_code == 200
    acct = await account_from(sso, other, "", made.json())
    me = (await sso.get("/v1/auth/me", headers=acct.headers)).json()
    assert me["user"]["email_verified_at"] is None


async def test_state_is_single_use_and_bound_to_the_browser(
    sso: httpx.AsyncClient, op_issuer: str, db: AsyncConnection
) -> None:
    start = await sso.get("/v1/auth/oauth/local/authorize", params={"login_hint": new_email()})
    callback = await _browser_to_callback(start.headers["location"])
    # another browser (no state cookie) cannot finish it: login CSRF
    app = sso._transport.app  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as other:
        stolen = await other.get(callback)
    assert stolen.status_code == 401
    assert stolen.json()["error"]["code"] == "oauth_state_mismatch"
    ok = await sso.get(callback)
    assert ok.status_code == 200, ok.text
    # the same callback again: the state is spent (and the cookie gone)
    sso.cookies.set("aistack_oauth_state", parse_qs(urlsplit(callback).query)["state"][0])
    replay = await sso.get(callback)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "oauth_state_invalid"


async def test_forged_code_and_denied_consent(sso: httpx.AsyncClient) -> None:
    start = await sso.get("/v1/auth/oauth/local/authorize", params={"response_mode": "json"})
    assert start.status_code == 200
    state = parse_qs(urlsplit(start.json()["authorization_url"]).query)["state"][0]
    forged = await sso.get(
        "/v1/auth/oauth/local/callback", params={"code": "forged-code", "state": state}
    )
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "oauth_code_rejected"

    start = await sso.get("/v1/auth/oauth/local/authorize", params={"response_mode": "json"})
    state = parse_qs(urlsplit(start.json()["authorization_url"]).query)["state"][0]
    denied = await sso.get(
        "/v1/auth/oauth/local/callback", params={"error": "access_denied", "state": state}
    )
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "oauth_denied"
    unknown = await sso.get("/v1/auth/oauth/nope/authorize")
    assert unknown.status_code == 404


# --------------------------------------------------------------- ID token validation


def _client_with_key(key: Ed25519PrivateKey, issuer: str = "https://op.example") -> OIDCClient:
    cache: dict[str, object] = {}
    client = OIDCClient(
        "x",
        OIDCProvider(issuer=issuer, client_id="cid", client_secret="s"),
        httpx.AsyncClient(),
        cache,
    )
    pub = key.public_key().public_bytes_raw()
    client.cache = _Cached(
        metadata={
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/auth",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
        },
        metadata_at=time.monotonic(),
        jwks={"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(pub), "kid": "k1"}]},
        jwks_at=time.monotonic(),
    )
    return client


def _id_token(key: Ed25519PrivateKey, **over: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "https://op.example",
        "aud": "cid",
        "sub": "s1",
        "nonce": "n1",
        "iat": now,
        "exp": now + 300,
        **over,
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "k1"})


async def test_id_token_checks() -> None:
    key = Ed25519PrivateKey.generate()
    client = _client_with_key(key)
    claims = await client.verify_id_token(_id_token(key), "n1")
    assert claims["sub"] == "s1"
    now = int(time.time())
    bad = {
        "wrong nonce": _id_token(key, nonce="other"),
        "no nonce": _id_token(key, nonce=None),
        "wrong audience": _id_token(key, aud="someone-else"),
        "wrong issuer": _id_token(key, iss="https://evil.example"),
        "expired": _id_token(key, exp=now - 3600, iat=now - 7200),
        "two audiences, no azp": _id_token(key, aud=["cid", "other"]),
        "other key": _id_token(Ed25519PrivateKey.generate()),
        "alg none": ".".join(
            [
                b64url(json.dumps({"alg": "none", "kid": "k1"}).encode()),
                b64url(json.dumps({"iss": "https://op.example", "aud": "cid"}).encode()),
                "",
            ]
        ),
        "HS256": jwt.encode(
            {"iss": "https://op.example", "aud": "cid", "sub": "s1", "nonce": "n1"},
            "s",
            algorithm="HS256",
        ),
    }
    for name, token in bad.items():
        with pytest.raises(Exception) as info:
            await client.verify_id_token(token, "n1")
        assert getattr(info.value, "code", None) == "invalid_id_token", name
    ok = await client.verify_id_token(_id_token(key, aud=["cid", "other"], azp="cid"), "n1")
    assert ok["azp"] == "cid"
