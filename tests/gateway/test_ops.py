"""The gateway's own operations: health, metrics, aggregated readiness, merged OpenAPI, docs."""

from __future__ import annotations

import httpx
import pytest

from gateway.openapi import merge_specs, swagger_assets_dir
from libs.app import VERSION
from libs.registry import NAMES
from libs.telemetry import metrics_text


async def test_health_and_metrics(gw: httpx.AsyncClient) -> None:
    resp = await gw.get("/health")
    assert resp.json() == {"status": "ok", "service": "gateway", "version": VERSION}
    await gw.get("/v1/jobs/conflict")
    # not on the public port (its own listener: tests/deploy/test_metrics.py)
    resp = await gw.get("/metrics")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    lines = metrics_text().splitlines()
    # proxied requests are labelled by prefix, not by a catch-all pattern
    assert any(
        line.startswith("aistack_http_requests_total{")
        and 'service="gateway"' in line
        and 'route="/v1/jobs"' in line
        and 'status="409"' in line
        for line in lines
    )


async def test_ready_when_every_service_is(gw: httpx.AsyncClient) -> None:
    resp = await gw.get("/ready")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ready",
        "services": {name: {"status": "ready"} for name in NAMES},
    }


async def test_not_ready_lists_the_service_that_is_down(degraded: httpx.AsyncClient) -> None:
    resp = await degraded.get("/ready")
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert err["code"] == "not_ready"
    services = err["details"]["services"]
    assert services["billing"]["status"] == "unreachable"
    assert all(services[n] == {"status": "ready"} for n in NAMES if n != "billing")
    assert "billing" in err["message"]


async def test_openapi_merges_every_service(gw: httpx.AsyncClient) -> None:
    resp = await gw.get("/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    paths = doc["paths"]
    for path in (
        "/v1/auth/items",
        "/v1/chat/items",
        "/v1/chat/stream",
        "/v1/vector_stores",
        "/v1/jobs/items",
        "/v1/billing/items",
        "/health",
        "/ready",
    ):
        assert path in paths, path
    # services' ops, internal routes and paths the gateway does not route stay out
    assert "/internal/secret" not in paths
    assert "/v1/unrouted-by-gateway" not in paths
    assert "/metrics" not in paths
    assert doc["info"]["version"] == VERSION  # pyproject.toml's, as every service's
    assert paths["/v1/jobs/items"]["post"]["tags"] == ["jobs"]
    assert {t["name"] for t in doc["tags"]} >= {"gateway", *NAMES}

    schemas = doc["components"]["schemas"]
    # defined identically everywhere: shared under its own name
    assert "Shared" in schemas
    # defined differently by rag: every version is prefixed and the refs follow
    assert "Item" not in schemas
    assert set(schemas["rag_Item"]["properties"]) == {"title", "size"}
    assert set(schemas["jobs_Item"]["properties"]) == {"name"}
    body = paths["/v1/vector_stores"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/rag_Item"
    body = paths["/v1/jobs/items"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/jobs_Item"

    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    # public routes need no credentials
    assert paths["/v1/auth/items"]["post"]["security"] == []
    assert "security" not in paths["/v1/jobs/items"]["post"]


async def test_openapi_without_a_service_still_answers(degraded: httpx.AsyncClient) -> None:
    doc = (await degraded.get("/openapi.json")).json()
    assert "/v1/jobs/items" in doc["paths"]
    assert not any(p.startswith("/v1/billing") for p in doc["paths"])
    assert doc["info"]["x-unavailable-services"] == ["billing"]


async def test_docs_page_points_at_the_merged_document(gw: httpx.AsyncClient) -> None:
    resp = await gw.get("/docs")
    assert resp.status_code == 200
    assert "/openapi.json" in resp.text
    assert "swagger-ui-bundle.js" in resp.text
    if swagger_assets_dir() is None:
        # no packaged assets: the public CDN
        assert "https://cdn.jsdelivr.net" in resp.text
    else:
        # packaged assets are served by the gateway itself (air-gapped installs)
        assert "https://" not in resp.text
        assert "/docs/static/swagger-ui-bundle.js" in resp.text
        js = await gw.get("/docs/static/swagger-ui-bundle.js")
        assert js.status_code == 200
        assert len(js.content) > 100_000
        css = await gw.get("/docs/static/swagger-ui.css")
        assert css.status_code == 200


def test_merge_drops_internal_identity_header_parameters() -> None:
    spec = {
        "paths": {
            "/v1/jobs": {
                "get": {
                    "parameters": [
                        {"name": "x-aistack-principal", "in": "header"},
                        {"name": "limit", "in": "query"},
                    ],
                    "responses": {},
                }
            }
        }
    }
    merged = merge_specs({"openapi": "3.1.0", "info": {"title": "t"}, "paths": {}}, {"jobs": spec})
    assert merged["paths"]["/v1/jobs"]["get"]["parameters"] == [{"name": "limit", "in": "query"}]


@pytest.mark.parametrize("collide", [True, False])
def test_merge_keeps_gateway_schema_names(collide: bool) -> None:
    own = {
        "openapi": "3.1.0",
        "info": {"title": "t"},
        "paths": {},
        "components": {"schemas": {"Err": {"type": "object"}}},
    }
    svc = {
        "paths": {},
        "components": {"schemas": {"Err": {"type": "string"} if collide else {"type": "object"}}},
    }
    merged = merge_specs(own, {"llm": svc})
    schemas = merged["components"]["schemas"]
    assert schemas["Err"] == {"type": "object"}
    assert ("llm_Err" in schemas) is collide
