"""The llm service in tests: its app over fake OpenAI upstreams (real HTTP on loopback),
called in-process with the real ``openai`` SDK (:func:`open_env`), or on real sockets behind
the gateway with the fake auth service (:func:`llm_behind_gateway`), what a client of the
OpenAI routes talks to."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import orjson
import pytest
import yaml
from fastapi import FastAPI
from redis.asyncio import Redis

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.identity import Principal
from libs.testing import Infra, auth_headers, principal, running
from libs.usage import USAGE_STREAM
from services.llm.app import build_app as build_llm
from services.llm.chat.service import ChatService
from services.llm.settings import LlmSettings
from services.llm.state import LlmState
from tests.support.fakes import openai_fake
from tests.support.fakes.auth_fake import FakeAuth
from tests.support.fakes.vendor_common import Behavior
from tests.support.fakes.vendor_common import serve as serve_thread
from tests.support.servers import Running, serve


@dataclass
class LlmStack:
    gateway: str
    llm: str
    auth_url: str
    llm_app: FastAPI
    auth: FakeAuth = field(repr=False)

    def sdk(self, key: str, timeout: float = 20) -> openai.AsyncOpenAI:
        """The official SDK pointed at the gateway with ``key``, without its own retries."""
        return openai.AsyncOpenAI(
            base_url=f"{self.gateway}/v1", api_key=key, max_retries=0, timeout=timeout
        )


@contextlib.contextmanager
def fake_openai_upstream() -> Iterator[Upstream]:
    """The fake OpenAI API in a thread, with the behaviour tests steer it by."""
    behavior = Behavior()
    with serve_thread(openai_fake.make_app(behavior)) as url:
        yield Upstream(url, behavior)


def gateway_settings(
    infra: Infra, auth_url: str, llm_url: str, **overrides: Any
) -> GatewaySettings:
    return GatewaySettings.model_validate(
        {
            "use_redis": True,
            "redis_url": infra.redis_url,
            "auth_url": auth_url,
            "llm_url": llm_url,
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def llm_behind_gateway(
    infra: Infra,
    llm_dir: Path,
    routing: dict[str, Any],
    *,
    llm: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
) -> AsyncIterator[LlmStack]:
    """Start auth (fake), llm (``routing``, settings overrides ``llm``) and the gateway
    (overrides ``gateway``); stop them in reverse order. The provider's API key variable
    (:data:`KEY_ENV`) must be set by the caller."""
    auth = FakeAuth()
    running: list[Running] = [await serve(auth.app())]
    try:
        llm_app = build_llm(settings_for(llm_dir, routing, **(llm or {})))
        running.append(await serve(llm_app))
        settings = gateway_settings(infra, running[0].url, running[1].url, **(gateway or {}))
        running.append(await serve(build_gateway(settings)))
        yield LlmStack(running[2].url, running[1].url, running[0].url, llm_app, auth)
    finally:
        for r in reversed(running):
            await r.stop()


@contextlib.asynccontextmanager
async def openai_behind_gateway(
    infra: Infra,
    llm_dir: Path,
    upstream: Upstream,
    *,
    llm: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
) -> AsyncIterator[LlmStack]:
    """:func:`llm_behind_gateway` with every alias on the fake OpenAI ``upstream`` (as primary
    and backup), its API key variable set for as long as the stack runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, openai_fake.API_KEY)
        async with llm_behind_gateway(
            infra, llm_dir, routing(upstream, upstream), llm=llm, gateway=gateway
        ) as stack:
            yield stack


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
    def service(self) -> ChatService:
        service = LlmState.of_app(self.app).llm
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
        """Usage events on the usage stream (what billing's worker will record), each with
        its key as ``job_id``."""
        await self.service.drain()
        out = []
        for _, fields in await self.redis.xrange(USAGE_STREAM):
            event = orjson.loads(fields[b"e"])
            out.append({"job_id": f"usage:{event['kind']}:{event['request_id']}", **event})
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
