"""The gateway forwards by prefix, streams unbuffered, and fails in the one error shape."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.routes import match_route
from libs.registry import ROUTES
from tests.support.stacks.stand_ins import FAKE_AUTH, Controls, Stack

PREFIXES = {
    "/v1/auth/login": "auth",
    "/v1/api-keys": "auth",
    "/v1/orgs/o1/members": "auth",
    "/.well-known/jwks.json": "auth",
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "llm",
    "/v1/models": "llm",
    "/v1/responses": "llm",
    "/v1/prompts/p1": "llm",
    "/v1/conversations": "llm",
    "/v1/files/file-1/content": "rag",
    "/v1/vector_stores/vs1/files": "rag",
    "/v1/jobs/j1": "jobs",
    "/v1/notifications": "jobs",
    "/v1/billing/usage": "billing",
}


@pytest.mark.parametrize(("path", "service"), sorted(PREFIXES.items()))
async def test_routes_each_prefix_to_its_service(
    gw: httpx.AsyncClient, path: str, service: str
) -> None:
    resp = await gw.post(path + "?a=1&b=%20x", content=b'{"hello": "world"}')
    assert resp.status_code == 200, resp.text
    echo = resp.json()
    assert echo["service"] == service
    assert echo["path"] == path
    assert echo["method"] == "POST"
    assert echo["query"] == "a=1&b=%20x"
    assert echo["body"] == '{"hello": "world"}'
    assert resp.headers["x-upstream"] == service


def test_route_table_covers_the_documented_prefixes() -> None:
    for path, service in PREFIXES.items():
        route = match_route(path)
        assert route is not None and route.service == service
    openai = {r.prefix for r in ROUTES if r.openai}
    assert openai == {
        "/v1/chat",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/files",
        "/v1/vector_stores",
        "/v1/batches",
    }
    # a prefix must match whole segments
    assert match_route("/v1/chatty") is None
    assert match_route("/v1/jobsx/1") is None


@pytest.mark.parametrize(
    "path",
    [
        "/internal/secret",
        "/v1/unrouted-by-gateway",
        "/nope",
        "/v1/chat/../../internal/secret",
        "/v1/chat/%2e%2e/%2e%2e/internal/secret",
    ],
)
async def test_internal_and_unknown_paths_are_404(gw: httpx.AsyncClient, path: str) -> None:
    resp = await gw.get(path)
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["code"] == "not_found"
    assert err["request_id"] == resp.headers["x-request-id"]
    assert "x-upstream" not in resp.headers


async def test_service_errors_pass_through_unchanged(gw: httpx.AsyncClient, stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.upstreams["jobs"].url) as direct:
        direct_resp = await direct.get("/v1/jobs/conflict", headers={"x-request-id": "rid-1"})
    resp = await gw.get("/v1/jobs/conflict", headers={"x-request-id": "rid-1"})
    assert resp.status_code == direct_resp.status_code == 409
    assert resp.content == direct_resp.content
    assert resp.json()["error"] == {
        "code": "already_exists",
        "message": "Already there",
        "request_id": "rid-1",
        "details": {"who": "jobs"},
    }


async def test_malformed_body_error_comes_from_the_service(gw: httpx.AsyncClient) -> None:
    resp = await gw.post(
        "/v1/vector_stores", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "malformed_json"
    resp = await gw.post("/v1/vector_stores", json={"title": "kb", "size": 3})
    assert resp.status_code == 201
    assert resp.json() == {"title": "kb", "size": 3}


async def test_oversized_body_is_refused_at_the_gateway(degraded: httpx.AsyncClient) -> None:
    # the degraded gateway allows 1000 bytes
    resp = await degraded.post("/v1/jobs/x", content=b"x" * 5000)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 500

    # streamed without a declared length: refused once the limit is crossed
    resp = await degraded.post("/v1/jobs/x", content=chunks())
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"


async def test_streamed_request_body_reaches_the_service(gw: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"part{i};".encode()

    resp = await gw.put("/v1/billing/upload", content=chunks())
    assert resp.status_code == 200
    assert resp.json()["body"] == "part0;part1;part2;part3;part4;"


async def test_large_request_body_with_a_length_passes_intact(gw: httpx.AsyncClient) -> None:
    payload = bytes(range(256)) * 1200  # arrives at the gateway in several messages
    resp = await gw.post("/v1/billing/upload", content=payload)
    assert resp.status_code == 200
    echo = resp.json()
    assert echo["body"].encode("latin-1") == payload
    assert echo["headers"]["content-length"] == str(len(payload))
    assert "transfer-encoding" not in echo["headers"]


async def test_request_id_and_trace_context_reach_the_service(gw: httpx.AsyncClient) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    client_parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    resp = await gw.get(
        "/v1/models", headers={"x-request-id": "req-42", "traceparent": client_parent}
    )
    seen = resp.json()["headers"]
    assert seen["x-request-id"] == "req-42"
    assert resp.headers["x-request-id"] == "req-42"
    # same trace, continued by the gateway's own span
    assert seen["traceparent"].split("-")[1] == trace_id
    assert seen["traceparent"] != client_parent

    resp = await gw.get("/v1/models")
    seen = resp.json()["headers"]
    assert seen["x-request-id"] == resp.headers["x-request-id"]
    assert seen["traceparent"].startswith("00-")


async def test_forwarded_and_hop_by_hop_headers(gw: httpx.AsyncClient) -> None:
    resp = await gw.get(
        "/v1/models",
        headers={
            "x-forwarded-for": "6.6.6.6",
            "connection": "keep-alive, x-secret-hop",
            "x-secret-hop": "1",
        },
    )
    seen = resp.json()["headers"]
    # a client cannot pose as another address
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert "x-secret-hop" not in seen
    # the client's credentials stay at the gateway: services get the signed principal only
    assert "authorization" not in seen and "x-api-key" not in seen
    assert "x-aistack-principal" in seen
    # one date and one server header, not the upstream's as well
    assert len(resp.headers.get_list("date")) == 1
    assert len(resp.headers.get_list("server")) == 1


async def test_client_internal_identity_headers_are_stripped(gw: httpx.AsyncClient) -> None:
    resp = await gw.get(
        "/v1/billing/usage",
        headers={
            "x-aistack-principal": "forged.token.here",
            "X-Aistack-Org": "someone-else",
        },
    )
    seen = resp.json()["headers"]
    # only the gateway's own signed principal remains
    assert [h for h in seen if h.startswith("x-aistack-")] == ["x-aistack-principal"]
    assert seen["x-aistack-principal"] != "forged.token.here"


async def test_principal_is_signed_for_the_service(gw: httpx.AsyncClient) -> None:
    from libs.identity import verify_internal_token
    from libs.settings import DEV_INTERNAL_SECRET

    user, org = uuid.uuid4(), uuid.uuid4()
    token = FAKE_AUTH.token(user_id=user, org_id=org, roles=["member"])
    resp = await gw.get(
        "/v1/models", headers={"authorization": f"Bearer {token}", "x-aistack-principal": "forged"}
    )
    forwarded = resp.json()["headers"]["x-aistack-principal"]
    p = verify_internal_token(forwarded, DEV_INTERNAL_SECRET)
    assert (p.user_id, p.org_id, p.roles) == (user, org, ["member"])
    assert "llm:use" in p.scopes and "admin" not in p.scopes


async def test_service_down_is_503_in_the_error_shape(degraded: httpx.AsyncClient) -> None:
    resp = await degraded.get("/v1/billing/usage")
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert err["code"] == "service_unavailable"
    assert err["details"] == {"service": "billing"}
    assert err["request_id"] == resp.headers["x-request-id"]


async def test_slow_service_is_504_in_the_error_shape(degraded: httpx.AsyncClient) -> None:
    resp = await degraded.get("/v1/chat/slow")
    assert resp.status_code == 504
    err = resp.json()["error"]
    # /v1/chat is OpenAI-compatible: OpenAI's error shape
    assert err["code"] == "gateway_timeout"
    assert err["type"] == "api_error"
    assert "message" in err


async def test_first_sse_event_arrives_before_the_stream_ends(
    gw: httpx.AsyncClient, controls: Controls
) -> None:
    async with gw.stream("GET", "/v1/chat/stream") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        chunks = resp.aiter_raw()
        first = await anext(chunks)
        # the upstream is still holding event two back
        assert first == b"data: one\n\n"
        assert not controls.finished.is_set()
        controls.release.set()
        rest = b"".join([c async for c in chunks])
    assert rest == b"data: two\n\n"


async def test_client_disconnect_closes_the_upstream_stream(
    gw: httpx.AsyncClient, controls: Controls
) -> None:
    async with gw.stream("GET", "/v1/chat/forever") as resp:
        chunks = resp.aiter_raw()
        assert (await anext(chunks)).startswith(b"data: 0")
    # leaving the block closed the connection; the upstream generator must end
    await asyncio.wait_for(controls.stream_closed.wait(), 10)


async def test_upstream_dying_mid_body_is_not_passed_off_as_complete(
    gw: httpx.AsyncClient,
) -> None:
    async with gw.stream("GET", "/v1/billing/truncated") as resp:
        assert resp.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await resp.aread()
    # the gateway is fine afterwards
    assert (await gw.get("/v1/billing/x")).status_code == 200


async def test_large_streamed_body_passes_intact(gw: httpx.AsyncClient) -> None:
    resp = await gw.get("/v1/chat/big")
    assert resp.status_code == 200
    assert resp.content == b"x" * (64 * 4096)


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/chat/../../internal/secret",
        b"/v1/chat/%2e%2e/%2E%2E/internal/secret",
        b"/v1/chat/.%2e/..%2finternal/secret",
        b"/v1/chat/..\\..\\internal/secret",
        b"/v1/chat/%5c..%5c..%5cinternal/secret",
        b"/v1/chat/./stream",
    ],
)
async def test_paths_a_url_parser_would_rewrite_are_404(
    gw: httpx.AsyncClient, target: bytes
) -> None:
    # sent as is (httpx would resolve the dots itself): an upstream client that follows the URL
    # standard (pyreqwest) would turn them into a path the gateway never routes
    resp = await gw.get("/v1/chat/x", extensions={"target": target})
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "not_found"
    assert "secret" not in resp.text
