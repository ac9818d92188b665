"""Fixtures of every llm test folder: the llm app (``env``) over two fake OpenAI upstreams
(real HTTP on loopback), called with the real ``openai`` SDK through ``httpx.ASGITransport``;
the same app with aliases routed to every vendor's fake as well (``venv``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.testing import Infra
from services.llm.app import build_app
from tests.support.fakes import openai_fake
from tests.support.fakes.vendor_common import Behavior, serve
from tests.support.stacks.llm import KEY_ENV, Env, Upstream, open_env, routing, settings_for
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
