"""Fixtures of every llm test folder: the llm app (``env``) over two fake OpenAI upstreams
(real HTTP on loopback), called with the real ``openai`` SDK through ``httpx.ASGITransport``;
the same app with aliases routed to every vendor's fake as well (``venv``); the llm behind the
gateway on real sockets (``openai_stack``); a client of the prompt and conversation routes
(``c``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import Infra, client_for
from services.llm.app import build_app
from tests.support.fakes import openai_fake
from tests.support.fakes.vendor_common import Behavior, serve
from tests.support.stacks.llm import (
    KEY_ENV,
    Env,
    LlmStack,
    Upstream,
    fake_openai_upstream,
    open_env,
    openai_behind_gateway,
    routing,
    settings_for,
)
from tests.support.stacks.llm_store import store_app
from tests.support.stacks.vendors import (
    ANTHROPIC_KEY,
    ANTHROPIC_KEY_ENV,
    APPS,
    AZURE_KEY_ENV,
    GEMINI_KEY,
    GEMINI_KEY_ENV,
    vendor_routing,
)


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


@pytest.fixture(scope="session")
def vendor_servers() -> Iterator[dict[str, Upstream]]:
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, make_app in APPS.items():
            behavior = Behavior()
            servers[name] = Upstream(stack.enter_context(serve(make_app(behavior))), behavior)
        yield servers


@pytest.fixture
def upstreams(vendor_servers: dict[str, Upstream]) -> dict[str, Upstream]:
    for upstream in vendor_servers.values():
        upstream.reset()
    return vendor_servers


@pytest.fixture
async def venv(
    infra: Infra,
    redis: Redis,
    tmp_path: Path,
    upstreams: dict[str, Upstream],
    primary: Upstream,
    backup: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Env]:
    monkeypatch.setenv(KEY_ENV, openai_fake.API_KEY)
    monkeypatch.setenv(AZURE_KEY_ENV, openai_fake.AZURE_KEY)
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, ANTHROPIC_KEY)
    monkeypatch.setenv(GEMINI_KEY_ENV, GEMINI_KEY)
    app = build_app(settings_for(tmp_path, vendor_routing(upstreams)))
    async with open_env(app, primary, backup, redis) as env:
        yield env


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[Upstream]:
    with fake_openai_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
async def openai_stack(
    infra: Infra, fake_openai: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LlmStack]:
    """The llm over ``fake_openai`` behind the gateway and the fake auth service, on real
    sockets (one per test module)."""
    async with openai_behind_gateway(
        infra,
        tmp_path_factory.mktemp("llm"),
        fake_openai,
        llm={"request_timeout_s": 60},
    ) as stack:
        yield stack


@pytest.fixture
async def c(
    db: AsyncConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the llm app whose routing points at an upstream never called (prompts,
    conversations), in the test's rolled-back transaction."""
    async with client_for(store_app(tmp_path, monkeypatch), connection=db) as client:
        yield client
