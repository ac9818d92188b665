"""Authentication at the gateway: access tokens, API keys, scopes, public routes, revocation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis

from gateway.apikeys import CACHE_PREFIX, REVOKED_CHANNEL, key_digest
from gateway.revocations import SESSION_REVOKED_CHANNEL, SESSION_REVOKED_PREFIX
from libs.permissions import scopes_for_roles
from libs.testing import Infra
from tests.support.fakes.auth_fake import FakeAuth, ed25519_key, rsa_key
from tests.support.servers import serve
from tests.support.stacks.echo import (
    Upstream,
    echo_app,
    forwarded_principal,
    gateway_client,
    gateway_settings,
)


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    auth = FakeAuth(keys=[ed25519_key(), rsa_key()])
    running = await serve(echo_app(auth))
    yield Upstream(auth, running.url)
    await running.stop()


@pytest.fixture
async def gw(upstream: Upstream, infra: Infra, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as client:
        yield client


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _hs256(secret: bytes, header: dict[str, object], claims: dict[str, object]) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _attacks(auth: FakeAuth) -> dict[str, str]:
    key = auth.signing
    claims = auth.claims()
    public_jwk = key.jwk()
    raw_public = base64.urlsafe_b64decode(public_jwk["x"] + "==")
    from cryptography.hazmat.primitives import serialization

    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    valid = auth.sign(claims)
    head, _body, sig = valid.split(".")
    forged_claims = {**claims, "roles": ["owner"], "org": str(uuid.uuid4())}
    now = int(time.time())
    stranger = ed25519_key(kid=key.kid)
    return {
        "alg none": _unsigned({"alg": "none", "typ": "JWT", "kid": key.kid}, claims, b""),
        "alg none, no signature part": _unsigned({"alg": "none", "kid": key.kid}, claims, b"")[:-1],
        "HS256 with the raw public key": _hs256(
            raw_public, {"alg": "HS256", "kid": key.kid}, claims
        ),
        "HS256 with the PEM public key": _hs256(pem, {"alg": "HS256", "kid": key.kid}, claims),
        "HS256 with the JWK as text": _hs256(
            json.dumps(public_jwk).encode(), {"alg": "HS256", "kid": key.kid}, claims
        ),
        "expired": auth.sign(auth.claims(ttl=-60)),
        "not yet valid": auth.sign({**claims, "nbf": now + 120}),
        "unknown kid": auth.sign(claims, ed25519_key()),
        "no kid": _unsigned({"alg": "EdDSA"}, claims, base64.urlsafe_b64decode(sig + "==")),
        "signed by another key under a known kid": auth.sign(claims, stranger),
        "tampered payload": f"{head}.{_b64(json.dumps(forged_claims).encode())}.{sig}",
        "RS256 header on an Ed25519 kid": _unsigned(
            {"alg": "RS256", "kid": key.kid}, claims, base64.urlsafe_b64decode(sig + "==")
        ),
        "wrong issuer": auth.sign({**claims, "iss": "someone-else"}),
        "wrong audience": auth.sign({**claims, "aud": "another-api"}),
        "no expiry": auth.sign({k: v for k, v in claims.items() if k != "exp"}),
        "subject not a user id": auth.sign({**claims, "sub": "admin"}),
        "roles not a list": auth.sign({**claims, "roles": "owner"}),
        "garbage": "abc.def.ghi",
        "not a JWT at all": "hello",
    }


ATTACKS = sorted(_attacks(FakeAuth()).keys())


@pytest.mark.parametrize("attack", ATTACKS)
async def test_jwt_attacks_are_401(gw: httpx.AsyncClient, upstream: Upstream, attack: str) -> None:
    token = _attacks(upstream.auth)[attack]
    resp = await gw.get("/v1/jobs", headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 401, (attack, resp.text)
    err = resp.json()["error"]
    # a bearer value that cannot be a JWT is refused as the API key it must have been meant as
    expected = {"invalid_api_key"} if attack == "not a JWT at all" else {"invalid_token"}
    assert err["code"] in expected | {"token_expired"}
    assert err["request_id"] == resp.headers["x-request-id"]
    assert resp.headers["www-authenticate"].startswith('Bearer realm="aistack"')
    # on OpenAI-compatible routes, OpenAI's shape
    resp = await gw.post(
        "/v1/chat/completions", json={}, headers={"authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"


async def test_a_valid_token_reaches_the_service_as_the_principal(
    gw: httpx.AsyncClient, upstream: Upstream
) -> None:
    user, org, sid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for key in upstream.auth.keys:  # EdDSA and RS256
        token = upstream.auth.sign(
            upstream.auth.claims(user_id=user, org_id=org, roles=["member"], session_id=sid), key
        )
        resp = await gw.get("/v1/jobs/1", headers={"authorization": f"Bearer {token}"})
        p = forwarded_principal(resp)
        assert p is not None
        assert (p.user_id, p.org_id, p.session_id, p.roles) == (user, org, sid, ["member"])
        assert p.scopes == scopes_for_roles(["member"])
        assert p.key_id is None
        # the client's credentials are not mistaken for the gateway's identity header
        assert resp.json()["headers"]["x-aistack-principal"] != token


async def test_missing_credentials_are_401_with_a_challenge(gw: httpx.AsyncClient) -> None:
    resp = await gw.get("/v1/vector_stores")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"
    assert resp.headers["www-authenticate"] == 'Bearer realm="aistack"'
    resp = await gw.post("/v1/chat/completions", json={"model": "x", "messages": []})
    assert resp.status_code == 401
    err = resp.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == "unauthorized"
    resp = await gw.get("/v1/jobs", headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_authorization"


async def test_public_routes_forward_valid_credentials_and_ignore_bad_ones(
    gw: httpx.AsyncClient, upstream: Upstream
) -> None:
    assert forwarded_principal(await gw.post("/v1/auth/login", json={})) is None
    user = uuid.uuid4()
    good = upstream.auth.token(user_id=user)
    p = forwarded_principal(
        await gw.get("/v1/auth/me", headers={"authorization": f"Bearer {good}"})
    )
    assert p is not None and p.user_id == user
    expired = upstream.auth.token(ttl=-600)
    for headers in (
        {"authorization": f"Bearer {expired}"},
        {"authorization": "Bearer nonsense"},
        {"authorization": "Basic abc"},
        {"x-api-key": "ask_" + "x" * 40},
    ):
        resp = await gw.post("/v1/auth/refresh", json={}, headers=headers)
        assert forwarded_principal(resp) is None, headers
    jwks = await gw.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    assert {k["kid"] for k in jwks.json()["keys"]} == {k.kid for k in upstream.auth.keys}


async def test_internal_routes_are_never_reachable(
    gw: httpx.AsyncClient, upstream: Upstream
) -> None:
    token = upstream.auth.token()
    for path in (
        "/internal/api-keys/introspect",
        "/internal",
        "//internal/api-keys/introspect",
        "/v1/auth/../internal/api-keys/introspect",
    ):
        resp = await gw.post(path, json={"key": "x"}, headers={"authorization": f"Bearer {token}"})
        assert resp.status_code == 404, path
        assert resp.json()["error"]["code"] == "not_found"


async def test_scopes_per_route_and_for_writes(gw: httpx.AsyncClient, upstream: Upstream) -> None:
    auth = upstream.auth
    viewer = {"authorization": f"Bearer {auth.token(roles=['viewer'])}"}
    member = {"authorization": f"Bearer {auth.token(roles=['member'])}"}
    owner = {"authorization": f"Bearer {auth.token(roles=['owner'])}"}

    assert (await gw.get("/v1/vector_stores", headers=viewer)).status_code == 200
    resp = await gw.post("/v1/vector_stores", json={}, headers=viewer)
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "insufficient_scope"
    assert "rag:write" in resp.json()["error"]["message"]
    # searching a knowledge base reads it
    assert (await gw.post("/v1/vector_stores/k/search", json={}, headers=viewer)).status_code == (
        200
    )
    assert (await gw.delete("/v1/vector_stores/k", headers=viewer)).status_code == 403
    assert (await gw.post("/v1/vector_stores", json={}, headers=member)).status_code == 200
    assert (await gw.post("/v1/jobs/j/cancel", headers=viewer)).status_code == 403
    assert (await gw.post("/v1/jobs/j/cancel", headers=member)).status_code == 200
    # chat needs llm:use, which a viewer lacks: 403 in OpenAI's shape
    resp = await gw.post("/v1/chat/completions", json={}, headers=viewer)
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    # administration needs admin
    assert (await gw.get("/v1/admin/flags", headers=member)).status_code == 403
    assert (await gw.get("/v1/admin/flags", headers=owner)).status_code == 200


async def test_api_keys_via_either_header(gw: httpx.AsyncClient, upstream: Upstream) -> None:
    key, info = upstream.auth.add_api_key(scopes=["llm:use", "rag:read"], rpm_limit=77)
    for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
        resp = await gw.get("/v1/models", headers=headers)
        # the key itself never reaches the service, only the principal it stands for
        seen = resp.json()["headers"]
        assert "authorization" not in seen and "x-api-key" not in seen
        p = forwarded_principal(resp)
        assert p is not None
        assert str(p.key_id) == info["key_id"]
        assert str(p.org_id) == info["org_id"]
        assert str(p.user_id) == info["user_id"]
        assert p.scopes == ["llm:use", "rag:read"]
        assert (p.plan, p.rpm_limit, p.kind) == ("pro", 77, "api_key")


async def test_an_api_key_without_the_scope_is_403(
    gw: httpx.AsyncClient, upstream: Upstream
) -> None:
    key, _ = upstream.auth.add_api_key(scopes=["rag:read"])
    resp = await gw.post("/v1/chat/completions", json={}, headers={"x-api-key": key})
    assert resp.status_code == 403
    err = resp.json()["error"]
    assert err["code"] == "insufficient_scope" and err["type"] == "permission_error"
    assert "llm:use" in err["message"]
    assert (await gw.get("/v1/vector_stores", headers={"x-api-key": key})).status_code == 200
    resp = await gw.post("/v1/vector_stores", json={}, headers={"x-api-key": key})
    assert resp.status_code == 403


async def test_unknown_and_expired_keys_are_401(
    gw: httpx.AsyncClient, upstream: Upstream, redis: Redis
) -> None:
    unknown = "ask_" + "A" * 40
    before = upstream.auth.introspections
    for _ in range(3):
        resp = await gw.get("/v1/models", headers={"x-api-key": unknown})
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"
    # the negative answer is cached too
    assert upstream.auth.introspections == before + 1
    assert await redis.ttl(CACHE_PREFIX + key_digest(unknown)) > 0

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired, _ = upstream.auth.add_api_key(expires_at=past)
    resp = await gw.get("/v1/models", headers={"x-api-key": expired})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "api_key_expired"
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later, _ = upstream.auth.add_api_key(expires_at=future)
    assert (await gw.get("/v1/models", headers={"x-api-key": later})).status_code == 200


async def test_api_keys_are_cached_in_process_and_in_redis(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    key, _ = upstream.auth.add_api_key()
    before = upstream.auth.introspections
    settings = gateway_settings(upstream.url, infra.redis_url)
    async with gateway_client(settings) as one, gateway_client(settings) as two:
        results = await asyncio.gather(
            *(one.get("/v1/models", headers={"x-api-key": key}) for _ in range(20))
        )
        assert all(r.status_code == 200 for r in results)
        # concurrent first uses of a key make one introspection
        assert upstream.auth.introspections == before + 1
        assert await redis.ttl(CACHE_PREFIX + key_digest(key)) > 0
        # another gateway finds it in Redis
        assert (await two.get("/v1/models", headers={"x-api-key": key})).status_code == 200
        assert upstream.auth.introspections == before + 1


async def _until_refused(gw: httpx.AsyncClient, key: str, limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        resp = await gw.get("/v1/models", headers={"x-api-key": key})
        if resp.status_code == 401:
            return time.monotonic() - start
        assert resp.status_code == 200
        await asyncio.sleep(0.02)
    return float("inf")


async def _subscribed(redis: Redis, count: int) -> None:
    for _ in range(200):
        numsub = dict(await redis.pubsub_numsub(REVOKED_CHANNEL))
        if numsub.get(REVOKED_CHANNEL.encode(), 0) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("gateways never subscribed to revocations")


async def test_a_revoked_key_is_refused_within_a_second(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url)
    async with gateway_client(settings) as one, gateway_client(settings) as two:
        await _subscribed(redis, 2)
        key, _ = upstream.auth.add_api_key()
        for gw in (one, two):
            assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200
        await upstream.auth.revoke(key, redis)
        elapsed = await asyncio.gather(_until_refused(one, key, 3), _until_refused(two, key, 3))
        assert max(elapsed) < 1.0, elapsed


async def test_a_revoked_key_is_refused_within_a_second_even_if_the_message_is_lost(
    gw: httpx.AsyncClient, upstream: Upstream, redis: Redis
) -> None:
    key, _ = upstream.auth.add_api_key()
    assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200
    await upstream.auth.revoke(key, redis, publish=False)
    # only the in-process entry (half a second at most) stands between revocation and refusal
    assert await _until_refused(gw, key, 3) < 1.0


async def test_auth_down_is_503_for_unknown_keys(gw: httpx.AsyncClient, upstream: Upstream) -> None:
    key, _ = upstream.auth.add_api_key()
    upstream.auth.up = False
    try:
        resp = await gw.get("/v1/models", headers={"x-api-key": key})
    finally:
        upstream.auth.up = True
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "auth_unavailable"
    assert (await gw.get("/v1/models", headers={"x-api-key": key})).status_code == 200


async def test_a_new_signing_key_is_picked_up(gw: httpx.AsyncClient, upstream: Upstream) -> None:
    assert (
        await gw.get("/v1/jobs", headers={"authorization": f"Bearer {upstream.auth.token()}"})
    ).status_code == 200
    rotated = ed25519_key()
    upstream.auth.keys.insert(0, rotated)
    try:
        await asyncio.sleep(0.25)  # past the refetch spacing
        fresh = upstream.auth.token()
        resp = await gw.get("/v1/jobs", headers={"authorization": f"Bearer {fresh}"})
        assert resp.status_code == 200, resp.text
    finally:
        upstream.auth.keys.remove(rotated)


async def test_a_flood_of_unknown_kids_fetches_the_jwks_once(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    settings = gateway_settings(
        upstream.url, infra.redis_url, jwks_min_refetch_interval=30, rate_limit_auth_failures=0
    )
    async with gateway_client(settings) as gw:
        ok = await gw.get("/v1/jobs", headers={"authorization": f"Bearer {upstream.auth.token()}"})
        assert ok.status_code == 200
        before = upstream.auth.jwks_fetches
        bogus = [upstream.auth.sign(upstream.auth.claims(), ed25519_key()) for _ in range(50)]
        results = await asyncio.gather(
            *(gw.get("/v1/jobs", headers={"authorization": f"Bearer {t}"}) for t in bogus)
        )
        assert all(r.status_code == 401 for r in results)
        assert upstream.auth.jwks_fetches - before <= 1


async def test_jwks_unreachable_before_first_load_is_503(
    upstream: Upstream, infra: Infra, redis: Redis
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url)
    upstream.auth.up = False
    try:
        async with gateway_client(settings) as gw:
            token = upstream.auth.token()
            resp = await gw.get("/v1/jobs", headers={"authorization": f"Bearer {token}"})
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "auth_unavailable"
            upstream.auth.up = True
            await asyncio.sleep(0.25)
            resp = await gw.get("/v1/jobs", headers={"authorization": f"Bearer {token}"})
            assert resp.status_code == 200
    finally:
        upstream.auth.up = True


@pytest.mark.parametrize("announced", [True, False])
async def test_tokens_of_an_ended_session_are_refused_within_a_second(
    upstream: Upstream, infra: Infra, redis: Redis, announced: bool
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url)
    sid = uuid.uuid4()
    bearer = {"authorization": f"Bearer {upstream.auth.token(session_id=sid)}"}
    other = {"authorization": f"Bearer {upstream.auth.token()}"}
    async with gateway_client(settings) as gw:
        await _subscribed(redis, 1)
        assert (await gw.get("/v1/jobs", headers=bearer)).status_code == 200
        # as the auth service does on logout: a marker for the tokens' lifetime, announced
        await redis.set(f"{SESSION_REVOKED_PREFIX}{sid}", b"1", ex=960)
        if announced:
            await redis.publish(SESSION_REVOKED_CHANNEL, str(sid))
        start = time.monotonic()
        while (resp := await gw.get("/v1/jobs", headers=bearer)).status_code == 200:
            assert time.monotonic() - start < 1.1
            await asyncio.sleep(0.02)
        assert time.monotonic() - start < (0.5 if announced else 1.1)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "session_revoked"
        # on a public route the ended session is simply not forwarded
        assert forwarded_principal(await gw.get("/v1/auth/me", headers=bearer)) is None
        # other sessions are unaffected
        assert (await gw.get("/v1/jobs", headers=other)).status_code == 200


async def test_a_lookup_racing_a_revocation_cannot_bring_the_key_back(
    upstream: Upstream, redis: Redis
) -> None:
    from gateway.apikeys import ApiKeyResolver
    from libs.settings import DEV_INTERNAL_SECRET

    key, info = upstream.auth.add_api_key()
    async with httpx.AsyncClient() as client:
        resolver = ApiKeyResolver(
            client=client, auth_url=upstream.url, internal_secret=DEV_INTERNAL_SECRET, redis=redis
        )
        assert (await resolver.resolve(key)).active
        await upstream.auth.revoke(key, redis)
        resolver.forget(key_digest(key))
        # a slow lookup elsewhere wrote the old positive answer after auth deleted it
        await redis.set(CACHE_PREFIX + key_digest(key), json.dumps(info), ex=30)
        assert not (await resolver.resolve(key)).active


def test_internal_tokens_are_reused_per_principal_for_half_their_life() -> None:
    from gateway.security import InternalTokens
    from libs.identity import verify_internal_token
    from libs.settings import DEV_INTERNAL_SECRET
    from libs.testing import principal

    tokens = InternalTokens(DEV_INTERNAL_SECRET, 60)
    p, q = principal(), principal()
    first = tokens.token(p)
    assert tokens.token(p) is first
    assert verify_internal_token(first.decode(), DEV_INTERNAL_SECRET) == p
    other = tokens.token(q)
    assert verify_internal_token(other.decode(), DEV_INTERNAL_SECRET) == q
    # an equal principal that is another object is signed afresh
    assert tokens.token(p.model_copy()) is not first
    short = InternalTokens(DEV_INTERNAL_SECRET, 0)
    assert short.token(p) is not short.token(p)
