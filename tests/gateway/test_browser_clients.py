"""CORS for the OpenAI-compatible clients that run in a browser page (the official Node SDK
with ``dangerouslyAllowBrowser``, the Vercel AI SDK): their preflights, as they send them."""

from __future__ import annotations

import pytest

from libs.testing import Infra
from tests.support.stacks.echo import Upstream, gateway_client, gateway_settings

ORIGIN = "https://app.example.com"

# openai-node in a browser: its platform headers, retry count and timeout on every request
OPENAI_NODE_BROWSER = (
    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
    "x-stainless-runtime-version,x-stainless-timeout"
)


@pytest.mark.parametrize(
    "requested",
    [
        OPENAI_NODE_BROWSER,
        # its helpers (`runTools`, `stream`, polling) and organization/project options
        "authorization,content-type,x-stainless-helper-method,openai-organization,openai-project",
        # the Vercel AI SDK names itself in user-agent (a browser that lets a page set it
        # asks first); aistack's own per-request options
        "authorization,content-type,user-agent,x-aistack-cache,x-aistack-timeout",
    ],
)
async def test_browser_sdk_preflights_pass(
    upstream: Upstream, infra: Infra, requested: str
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url, cors_allow_origins=[ORIGIN])
    async with gateway_client(settings) as gw:
        resp = await gw.options(
            "/v1/chat/completions",
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": requested,
            },
        )
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip() for h in resp.headers["access-control-allow-headers"].lower().split(",")}
    assert set(requested.split(",")) <= allowed


async def test_aistack_answer_headers_are_readable_by_the_page(
    upstream: Upstream, infra: Infra
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url, cors_allow_origins=[ORIGIN])
    async with gateway_client(settings) as gw:
        resp = await gw.get("/v1/jobs", headers={"origin": ORIGIN})
    exposed = {h.strip() for h in resp.headers["access-control-expose-headers"].lower().split(",")}
    assert {"x-request-id", "retry-after", "x-aistack-cache", "x-aistack-provider"} <= exposed
    assert "x-aistack-idempotent-replay" in exposed
