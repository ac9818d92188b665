"""Bad input on every auth route: 422 in the one error shape, and nothing written."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auth.models import (
    ApiKey,
    AuditEvent,
    AuthSession,
    FeatureFlag,
    Invite,
    Membership,
    Organization,
    User,
)
from tests.support.stacks.auth import SERVICE, signup

HUGE = "x" * 100_000
BAD_EMAILS = ["not-an-email", "a@", "@b.com", "a b@c.com", 42, None, HUGE + "@example.com"]


async def _counts(db: AsyncConnection) -> list[int]:
    out = []
    for model in (
        User,
        Organization,
        Membership,
        AuthSession,
        ApiKey,
        Invite,
        AuditEvent,
        FeatureFlag,
    ):
        out.append(int((await db.execute(select(func.count()).select_from(model))).scalar_one()))
    return out


def _cases(org: str, user: str) -> list[tuple[str, str, list[Any]]]:
    """(method, path, bad bodies): each body is missing fields, of wrong types or too big."""
    pw = "Valid-pass-123"
    return [
        (
            "POST",
            "/v1/auth/register",
            [
                {},
                {"email": "a@example.com"},
                {"password": pw},
                *({"email": e, "password": pw} for e in BAD_EMAILS),
                {"email": "a@example.com", "password": HUGE},
                {"email": "a@example.com", "password": 123},
                {"email": "a@example.com", "password": pw, "display_name": HUGE},
                {"email": "a@example.com", "password": pw, "extra": 1},
                [],
                "string",
            ],
        ),
        (
            "POST",
            "/v1/auth/login",
            [
                {},
                {"email": "a@example.com"},
                *({"email": e, "password": pw} for e in BAD_EMAILS),
                {"email": "a@example.com", "password": HUGE},
                {"email": "a@example.com", "password": pw, "totp_code": HUGE},
                {"email": "a@example.com", "password": pw, "org_id": "not-a-uuid"},
            ],
        ),
        (
            "POST",
            "/v1/auth/refresh",
            [{}, {"refresh_token": 5}, {"refresh_token": HUGE}, {"refresh_token": ""}],
        ),
        ("POST", "/v1/auth/verify-email", [{}, {"token": None}, {"token": HUGE}]),
        ("POST", "/v1/auth/password/forgot", [{}, *({"email": e} for e in BAD_EMAILS)]),
        (
            "POST",
            "/v1/auth/password/reset",
            [
                {},
                {"token": "t"},
                {"new_password": pw},
                {"token": HUGE, "new_password": pw},
                {"token": "t", "new_password": HUGE},
                {"token": "t", "new_password": ["x"]},
            ],
        ),
        (
            "POST",
            "/v1/auth/password/change",
            [
                {},
                {"current_password": pw},
                {"current_password": pw, "new_password": HUGE},
                {"current_password": 1, "new_password": pw},
            ],
        ),
        ("POST", "/v1/auth/switch-org", [{}, {"org_id": "nope"}, {"org_id": 7}, {"org_id": HUGE}]),
        ("POST", "/v1/auth/totp/verify", [{}, {"code": HUGE}, {"code": 123456}]),
        ("POST", "/v1/auth/totp/disable", [{}, {"password": pw}, {"password": pw, "code": HUGE}]),
        ("DELETE", "/v1/auth/sessions/not-a-uuid", [None]),
        ("POST", "/v1/orgs", [{}, {"name": ""}, {"name": "   "}, {"name": HUGE}, {"name": 5}]),
        ("GET", "/v1/orgs/not-a-uuid", [None]),
        ("GET", f"/v1/orgs/{org}/members?limit=0", [None]),
        ("GET", f"/v1/orgs/{org}/members?limit=abc", [None]),
        ("PATCH", f"/v1/orgs/{org}/members/{user}", [{}, {"role": "god"}, {"role": 1}]),
        ("PATCH", f"/v1/orgs/{org}/members/not-a-uuid", [{"role": "admin"}]),
        (
            "POST",
            f"/v1/orgs/{org}/invites",
            [
                {},
                *({"email": e} for e in BAD_EMAILS),
                {"email": "a@example.com", "role": "king"},
            ],
        ),
        ("POST", "/v1/orgs/invites/accept", [{}, {"token": HUGE}, {"token": 1}]),
        ("GET", f"/v1/orgs/{org}/audit?since=yesterday", [None]),
        ("GET", f"/v1/orgs/{org}/audit?actor=bob", [None]),
        ("GET", f"/v1/orgs/{org}/audit?limit=1000", [None]),
        ("GET", f"/v1/orgs/{org}/audit?action={'a' * 65}", [None]),
        (
            "POST",
            "/v1/api-keys",
            [
                {},
                {"name": "k"},
                {"scopes": ["llm:use"]},
                {"name": "k", "scopes": []},
                {"name": "k", "scopes": ["nope"]},
                {"name": HUGE, "scopes": ["llm:use"]},
                {"name": "k", "scopes": "llm:use"},
                {"name": "k", "scopes": ["llm:use"], "rpm_limit": 0},
                {"name": "k", "scopes": ["llm:use"], "rpm_limit": "fast"},
                {"name": "k", "scopes": ["llm:use"], "tpm_limit": -5},
                {"name": "k", "scopes": ["llm:use"], "expires_at": "tomorrow"},
            ],
        ),
        ("GET", "/v1/api-keys/not-a-uuid", [None]),
        ("DELETE", "/v1/api-keys/not-a-uuid", [None]),
        ("GET", "/v1/api-keys?limit=-1", [None]),
        ("GET", "/v1/auth/oauth/Bad%20Name!/authorize", [None]),
        ("GET", f"/v1/auth/oauth/{'a' * 65}/authorize", [None]),
        ("GET", "/v1/auth/oauth/google/authorize?response_mode=popup", [None]),
        ("GET", f"/v1/auth/oauth/google/authorize?login_hint={'a' * 400}", [None]),
        ("GET", f"/v1/auth/oauth/google/callback?code={'c' * 3000}&state=s", [None]),
        ("GET", f"/v1/auth/oauth/google/callback?code=c&state={'s' * 600}", [None]),
    ]


async def test_bad_input_everywhere(client: httpx.AsyncClient, db: AsyncConnection) -> None:
    acct = await signup(client)
    before = await _counts(db)
    for method, path, bodies in _cases(str(acct.org_id), str(acct.user_id)):
        for body in bodies:
            kwargs: dict[str, Any] = {"headers": acct.headers}
            if body is not None:
                kwargs["json"] = body
            resp = await client.request(method, path, **kwargs)
            assert resp.status_code == 422, (method, path, str(body)[:80], resp.text[:300])
            err = resp.json()["error"]
            assert err["code"] == "validation_error" and err["request_id"], err
            assert isinstance(err["details"], list) and err["details"][0]["field"]
    assert await _counts(db) == before


async def test_internal_and_admin_routes_validate_too(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    before = await _counts(db)
    cases: list[tuple[str, str, Any]] = [
        ("POST", "/internal/api-keys/introspect", {}),
        ("POST", "/internal/api-keys/introspect", {"key": 5}),
        ("POST", "/internal/api-keys/introspect", {"key": HUGE}),
        ("PUT", "/v1/admin/flags/ok", {}),
        ("PUT", "/v1/admin/flags/ok", {"enabled": "maybe"}),
        ("PUT", "/v1/admin/flags/ok", {"enabled": True, "org_overrides": {"x": True}}),
        ("PUT", "/v1/admin/flags/ok", {"enabled": True, "description": HUGE}),
        ("PUT", f"/v1/admin/flags/{'a' * 101}", {"enabled": True}),
    ]
    for method, path, body in cases:
        resp = await client.request(method, path, json=body, headers=SERVICE)
        assert resp.status_code == 422, (method, path, resp.text[:200])
        assert resp.json()["error"]["code"] == "validation_error"
    assert await _counts(db) == before


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "malformed_json"
