"""The gateway in front of the real llm service, both on real sockets, with the fake auth
service: what a client of the OpenAI routes talks to, for tests that need the whole path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.testing import Infra
from services.llm.app import build_app as build_llm
from tests.gateway.authfake import FakeAuth
from tests.gateway.conftest import Running, serve
from tests.llm.api.conftest import KEY_ENV, Upstream, routing, settings_for
from tests.llm.fakes import openai_fake
from tests.llm.fakes.vendor_common import Behavior
from tests.llm.fakes.vendor_common import serve as serve_thread


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
    (``tests.llm.api.conftest.KEY_ENV``) must be set by the caller."""
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
