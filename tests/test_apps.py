"""Every app answers /health and /ready, counts its requests, and publishes its OpenAPI."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from fastapi import FastAPI

from libs.app import VERSION
from libs.telemetry import metrics_text
from libs.testing import Infra, auth_headers, client_for, principal

SERVICES = ["auth", "llm", "rag", "jobs", "billing"]


def build(service: str) -> FastAPI:
    module = importlib.import_module(f"services.{service}.app")
    app: FastAPI = module.build_app()
    return app


@pytest.mark.parametrize("service", SERVICES)
async def test_health_ready_metrics_openapi(service: str, infra: Infra) -> None:
    async with client_for(build(service)) as client:
        resp = await client.get("/health")
        assert resp.status_code == 200
        assert resp.json() == {"status": "ok", "service": service, "version": VERSION}
        resp = await client.get("/ready")
        assert resp.status_code == 200, resp.text
        database = {"status": "ok"}
        if service == "llm":  # connects with its first prompt or conversation
            database["detail"] = "not connected yet: connects on first use"
        assert resp.json()["checks"] == {"database": database, "redis": {"status": "ok"}}
        await client.get("/definitely-not-here")
        # metrics have their own listener (tests/deploy/test_metrics.py), not the app's port
        resp = await client.get("/metrics")
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"
        text = metrics_text()
        assert f'service="{service}"' in text
        assert any(
            line.startswith("aistack_http_requests_total{")
            and f'service="{service}"' in line
            and 'route="unmatched"' in line
            and 'status="404"' in line
            for line in text.splitlines()
        )
        spec = (await client.get("/openapi.json")).json()
        assert spec["info"]["title"] == f"aistack {service}"
        assert spec["info"]["version"] == VERSION


async def test_ready_reports_dependency_down(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    async with client_for(build("rag")) as client:
        resp = await client.get("/ready")
        assert resp.status_code == 503
        err = resp.json()["error"]
        assert err["code"] == "not_ready"
        assert err["details"]["checks"]["database"] == {"status": "ok"}
        assert err["details"]["checks"]["redis"]["status"] == "error"


def test_llm_serves_chat_without_loading_its_database_layer() -> None:
    # a fresh interpreter: this one has long imported SQLAlchemy for other tests
    code = (
        "import sys\n"
        "from services.llm.app import build_app\n"
        "build_app()\n"
        "late = ('sqlalchemy', 'asyncpg', 'jinja2', 'tiktoken')\n"
        "print(sorted(m for m in late if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


async def test_llm_connects_its_database_on_first_use(infra: Infra) -> None:
    async with client_for(build("llm")) as client:
        resp = await client.get("/ready")
        assert resp.json()["checks"]["database"]["detail"].startswith("not connected yet")
        headers = auth_headers(principal(scopes=["llm:use"]))
        resp = await client.get("/v1/conversations", headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"] == []
        resp = await client.get("/ready")
        assert resp.status_code == 200
        assert resp.json()["checks"]["database"] == {"status": "ok"}
