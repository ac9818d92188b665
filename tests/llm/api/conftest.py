"""The llm app over fake OpenAI upstreams (real HTTP on loopback), called with the real
``openai`` SDK through ``httpx.ASGITransport``."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import yaml
from arq.jobs import Job
from fastapi import FastAPI
from redis.asyncio import Redis

from libs.identity import Principal
from libs.queue import as_arq, queue_name
from libs.testing import Infra, auth_headers, principal, running
from libs.usage import BILLING_SERVICE, RECORD_USAGE
from services.llm.app import build_app
from services.llm.service import LlmService
from services.llm.settings import LlmSettings
from tests.llm.fakes import openai_fake
from tests.llm.fakes.vendor_common import Behavior, serve

KEY_ENV = "AISTACK_TEST_FAKE_OPENAI_KEY"


@dataclass
class Upstream:
    url: str
    behavior: Behavior

    def reset(self) -> None:
        fresh = Behavior()
        for f in dataclasses.fields(Behavior):
            setattr(self.behavior, f.name, getattr(fresh, f.name))

    @property
    def chat_calls(self) -> int:
        return sum(1 for r in self.behavior.requests if r["path"].endswith("/chat/completions"))


@pytest.fixture(scope="session")
def primary_server() -> Iterator[Upstream]:
    behavior = Behavior()
    with serve(openai_fake.make_app(behavior)) as url:
        yield Upstream(url, behavior)


@pytest.fixture(scope="session")
def backup_server() -> Iterator[Upstream]:
    behavior = Behavior()
    with serve(openai_fake.make_app(behavior)) as url:
        yield Upstream(url, behavior)


@pytest.fixture
def primary(primary_server: Upstream) -> Upstream:
    primary_server.reset()
    return primary_server


@pytest.fixture
def backup(backup_server: Upstream) -> Upstream:
    backup_server.reset()
    return backup_server


def routing(primary: Upstream, backup: Upstream) -> dict[str, Any]:
    def provider(url: str) -> dict[str, Any]:
        return {"kind": "openai", "base_url": f"{url}/v1", "api_key_env": KEY_ENV, "timeout": 5}

    return {
        "providers": {"primary": provider(primary.url), "backup": provider(backup.url)},
        "models": {
            "default": {
                "context_window": 128000,
                "price": {"input": 0.15, "output": 0.60},
                "targets": [{"provider": "primary", "model": "gpt-4o-mini"}],
            },
            "fallback": {
                "price": {"input": 1.0, "output": 2.0},
                "targets": [
                    {"provider": "primary", "model": "gpt-4o-mini"},
                    {
                        "provider": "backup",
                        "model": "gpt-4o",
                        "price": {"input": 2.5, "output": 10},
                    },
                ],
            },
            "embed": {
                "type": "embedding",
                "price": {"input": 0.02},
                "targets": [{"provider": "primary", "model": "text-embedding-3-small"}],
            },
        },
    }


@dataclass
class Env:
    app: FastAPI
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient
    sdk_http: httpx2.AsyncClient
    principal: Principal
    primary: Upstream
    backup: Upstream
    redis: Redis

    @property
    def service(self) -> LlmService:
        service: LlmService = self.app.state.llm
        return service

    def sdk(self, p: Principal, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://llm.test/v1",
            api_key="sk-aistack-unused",
            http_client=self.sdk_http,
            default_headers=auth_headers(p),
            max_retries=0,
            **kw,
        )

    async def usage_events(self) -> list[dict[str, Any]]:
        """Usage jobs on the billing queue (what billing's worker will record)."""
        await self.service.drain()
        arq = as_arq(self.redis)
        out = []
        for raw in await self.redis.zrange(queue_name(BILLING_SERVICE), 0, -1):
            job_id = raw.decode()
            info = await Job(job_id, arq, _queue_name=queue_name(BILLING_SERVICE)).info()
            assert info is not None and info.function == RECORD_USAGE
            out.append({"job_id": job_id, **info.args[0]})
        return out


def settings_for(tmp_path: Path, config: dict[str, Any], **overrides: Any) -> LlmSettings:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    base: dict[str, Any] = {
        "models_config": str(path),
        "retries": 1,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
        "breaker_failures": 3,
        "breaker_open_s": 60,
        "request_timeout_s": 3,
    }
    base.update(overrides)
    return LlmSettings(**base)


@pytest.fixture
def llm_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def env(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
    llm_overrides: dict[str, Any],
) -> AsyncIterator[Env]:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    app = build_app(settings_for(tmp_path, routing(primary, backup), **llm_overrides))
    async with open_env(app, primary, backup, redis) as env:
        yield env


@asynccontextmanager
async def open_env(
    app: FastAPI, primary: Upstream, backup: Upstream, redis: Redis
) -> AsyncIterator[Env]:
    """``app`` running, with raw and SDK clients for one API-key principal."""
    p = principal(key_id=uuid.uuid4())
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        sdk_transport = httpx2.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://llm.test") as http,
            httpx2.AsyncClient(transport=sdk_transport, base_url="http://llm.test") as sdk_http,
        ):
            env = Env(app, None, http, sdk_http, p, primary, backup, redis)  # type: ignore[arg-type]
            env.client = env.sdk(p)
            yield env
            await env.service.drain()
