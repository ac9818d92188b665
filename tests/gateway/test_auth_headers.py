"""Security headers, the /docs CSP, HSTS behind TLS, and CORS at the gateway."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from libs.testing import Infra
from tests.support.stacks.echo import Upstream, gateway_client, gateway_settings


def _csp(resp: httpx.Response) -> dict[str, str]:
    return {
        d.strip().split(" ", 1)[0]: d.strip().partition(" ")[2]
        for d in resp.headers["content-security-policy"].split(";")
        if d.strip()
    }


async def test_every_answer_carries_security_headers(upstream: Upstream, infra: Infra) -> None:
    token = upstream.auth.token()
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as gw:
        answers = [
            await gw.get("/v1/jobs", headers={"authorization": f"Bearer {token}"}),
            await gw.get("/v1/jobs"),  # 401 from the gateway
            await gw.get("/nope"),  # 404
            await gw.get("/health"),
        ]
        for resp in answers:
            assert resp.headers["x-content-type-options"] == "nosniff"
            csp = _csp(resp)
            assert csp["frame-ancestors"] == "'none'"
            assert csp["default-src"] == "'none'"
            assert resp.headers["referrer-policy"] == "no-referrer"
            # plain HTTP: HSTS would be meaningless (and is ignored by browsers)
            assert "strict-transport-security" not in resp.headers
        assert [r.status_code for r in answers] == [200, 401, 404, 200]


async def test_the_docs_page_csp_allows_exactly_what_swagger_ui_needs(
    upstream: Upstream, infra: Infra
) -> None:
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as gw:
        resp = await gw.get("/docs")
    assert resp.status_code == 200
    csp = _csp(resp)
    assert csp["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in csp["script-src"]
    # the page's one inline script is allowed by its hash
    inline = re.findall(r"<script>(.*?)</script>", resp.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp["script-src"]
    # and its external assets come from allowed origins
    for src in re.findall(r'<script src="([^"]+)"', resp.text):
        origin = "'self'" if src.startswith("/") else "/".join(src.split("/")[:3])
        assert origin in csp["script-src"].split(), src
    for href in re.findall(r'<link type="text/css" rel="stylesheet" href="([^"]+)"', resp.text):
        origin = "'self'" if href.startswith("/") else "/".join(href.split("/")[:3])
        assert origin in csp["style-src"].split(), href
    assert "'self'" in csp["connect-src"]  # fetches /openapi.json


@pytest.mark.parametrize(
    ("overrides", "headers", "expected"),
    [
        ({"behind_tls": True}, {}, True),
        ({"trust_forwarded_headers": True}, {"x-forwarded-proto": "https"}, True),
        ({"trust_forwarded_headers": True}, {"x-forwarded-proto": "http"}, False),
        # a client cannot claim TLS unless the proxy in front is trusted
        ({}, {"x-forwarded-proto": "https"}, False),
    ],
)
async def test_hsts_only_behind_tls(
    upstream: Upstream,
    infra: Infra,
    overrides: dict[str, bool],
    headers: dict[str, str],
    expected: bool,
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url, **overrides)
    async with gateway_client(settings) as gw:
        resp = await gw.get("/health", headers=headers)
    assert ("strict-transport-security" in resp.headers) is expected
    if expected:
        assert resp.headers["strict-transport-security"].startswith("max-age=31536000")


async def test_https_requests_get_hsts(upstream: Upstream, infra: Infra) -> None:
    from gateway.app import build_app
    from libs.testing import running

    app = build_app(gateway_settings(upstream.url, infra.redis_url))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://gw") as gw:
            resp = await gw.get("/health")
    assert "strict-transport-security" in resp.headers


async def test_no_cors_by_default(upstream: Upstream, infra: Infra) -> None:
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as gw:
        resp = await gw.options(
            "/v1/chat/completions",
            headers={
                "origin": "https://app.example.com",
                "access-control-request-method": "POST",
            },
        )
    assert "access-control-allow-origin" not in resp.headers


async def test_cors_preflight_for_allowed_origins(upstream: Upstream, infra: Infra) -> None:
    settings = gateway_settings(
        upstream.url, infra.redis_url, cors_allow_origins=["https://app.example.com"]
    )
    token = upstream.auth.token()
    async with gateway_client(settings) as gw:
        # a preflight carries no credentials and must not need any
        resp = await gw.options(
            "/v1/chat/completions",
            headers={
                "origin": "https://app.example.com",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in resp.headers["access-control-allow-methods"]
        allowed = resp.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "x-api-key" in allowed
        assert resp.headers["x-content-type-options"] == "nosniff"

        resp = await gw.options(
            "/v1/chat/completions",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert resp.status_code == 400
        assert "access-control-allow-origin" not in resp.headers

        # actual requests expose the rate limit headers to the page, errors included
        for headers in (
            {"origin": "https://app.example.com", "authorization": f"Bearer {token}"},
            {"origin": "https://app.example.com"},
        ):
            resp = await gw.get("/v1/jobs", headers=headers)
            assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
            exposed = resp.headers["access-control-expose-headers"].lower()
            assert "ratelimit-remaining" in exposed and "retry-after" in exposed


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings import GatewaySettings

    monkeypatch.setenv("GATEWAY_CORS_ALLOW_ORIGINS", '["https://a.example", "https://b.example"]')
    assert GatewaySettings().cors_allow_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("GATEWAY_CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")
    assert GatewaySettings().cors_allow_origins == ["https://a.example", "https://b.example"]
