"""Helpers for the auth tests: accounts through the real routes, and what a gateway does
with the tokens (verify against the JWKS, forward a signed principal)."""

from __future__ import annotations

import pickle
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.identity import Principal
from libs.permissions import scopes_for_roles
from libs.testing import auth_headers
from services.auth.core.security import Cipher
from services.auth.models import AuditEvent
from services.auth.settings import AuthSettings

PASSWORD = "Tr0ub4dor&3-horse"


class _GatewayHeaders(Mapping[str, str]):
    """The gateway's own headers (no user, no org), signed afresh every 20 s: an internal
    token lives 60 s, and one signed when the module was imported had expired by the time
    later tests of a full run used it."""

    def __init__(self) -> None:
        self._headers: dict[str, str] = {}
        self._signed_at = float("-inf")

    def _current(self) -> dict[str, str]:
        now = time.monotonic()
        if now - self._signed_at > 20:
            self._headers, self._signed_at = auth_headers(Principal()), now
        return self._headers

    def __getitem__(self, name: str) -> str:
        return self._current()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


SERVICE: Mapping[str, str] = _GatewayHeaders()


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


async def verify_access_token(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """Verify like the gateway: the token's kid must be in the JWKS; exact claims."""
    jwks = (await client.get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    return jwt.decode(
        token,
        keys[kid].key,
        algorithms=["EdDSA"],
        audience="aistack-api",
        issuer="aistack",
        options={"require": ["exp", "iat", "nbf", "sub", "aud", "iss", "jti"]},
    )


def principal_of(claims: dict[str, Any]) -> Principal:
    return Principal(
        user_id=uuid.UUID(claims["sub"]),
        org_id=uuid.UUID(claims["org"]),
        roles=claims["roles"],
        scopes=scopes_for_roles(claims["roles"]),
        session_id=uuid.UUID(claims["sid"]),
    )


@dataclass
class Account:
    email: str
    password: str
    tokens: dict[str, Any]
    claims: dict[str, Any]
    headers: dict[str, str]

    @property
    def user_id(self) -> uuid.UUID:
        return uuid.UUID(self.claims["sub"])

    @property
    def org_id(self) -> uuid.UUID:
        return uuid.UUID(self.claims["org"])

    @property
    def session_id(self) -> uuid.UUID:
        return uuid.UUID(self.claims["sid"])


async def login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra: Any
) -> Account:
    resp = await client.post("/v1/auth/login", json={"email": email, "password": password, **extra})
    assert resp.status_code == 200, resp.text
    return await account_from(client, email, password, resp.json())


async def account_from(
    client: httpx.AsyncClient, email: str, password: str, tokens: dict[str, Any]
) -> Account:
    claims = await verify_access_token(client, tokens["access_token"])
    return Account(email, password, tokens, claims, auth_headers(principal_of(claims)))


async def signup(
    client: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD
) -> Account:
    email = email or new_email()
    resp = await client.post("/v1/auth/register", json={"email": email, "password": password})
    assert resp.status_code == 202, resp.text
    return await login(client, email, password)


async def queued_mails(redis: Redis, settings: AuthSettings | None = None) -> list[dict[str, str]]:
    """Emails waiting on the auth queue (arq job records), bodies decrypted."""
    cipher = Cipher((settings or AuthSettings()).key_encryption_secret)
    out = []
    for key in await redis.keys("arq:job:auth-mail-*"):
        raw = await redis.get(key)
        if raw is None:
            continue
        job = pickle.loads(raw)
        kw = job["k"]
        body = cipher.decrypt(kw["body_sealed"].encode()).decode()
        out.append({"to": kw["to"], "subject": kw["subject"], "body": body})
    return out


def token_in(body: str, path: str) -> str:
    m = re.search(re.escape(path) + r"\?token=([A-Za-z0-9_\-%]+)", body)
    assert m, body
    return m.group(1)


async def mail_token(redis: Redis, to: str, subject_part: str, path: str) -> str:
    mails = [m for m in await queued_mails(redis) if m["to"] == to and subject_part in m["subject"]]
    assert mails, f"no mail {subject_part!r} to {to}"
    return token_in(mails[-1]["body"], path)


async def audit_actions(db: AsyncConnection, **where: object) -> list[str]:
    """The actions in the audit log, oldest first, of the events matching ``where``."""
    stmt = select(AuditEvent.action).order_by(AuditEvent.created_at, AuditEvent.id)
    for k, v in where.items():
        stmt = stmt.where(getattr(AuditEvent, k) == v)
    return list((await db.execute(stmt)).scalars())


def auth_settings(**overrides: object) -> AuthSettings:
    base: dict[str, object] = {"login_failures_per_ip": 1000, "log_json": False}
    base.update(overrides)
    return AuthSettings(**base)  # type: ignore[arg-type]
