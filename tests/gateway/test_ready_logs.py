"""The gateway's /ready logs when readiness changes, not on every poll."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from gateway.app import _log_readiness
from gateway.state import GatewayState
from libs.testing import Infra
from tests.support.servers import dead_url
from tests.support.stacks.echo import Upstream, gateway_client, gateway_settings


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[_Keep]:
    keep = _Keep()
    # the app's configure_logging replaces the root's handlers (pytest's caplog among them)
    names = ("aistack.gateway", "httpx")
    for name in names:
        logging.getLogger(name).addHandler(keep)
    yield keep
    for name in names:
        logging.getLogger(name).removeHandler(keep)


async def test_polling_ready_logs_one_line_per_change(
    upstream: Upstream, infra: Infra, logged: _Keep
) -> None:
    settings = gateway_settings(upstream.url, infra.redis_url, billing_url=dead_url())
    async with gateway_client(settings) as gw:
        for _ in range(5):
            assert (await gw.get("/ready")).status_code == 503
    lines = [(r.levelname, r.getMessage()) for r in logged.records]
    # nothing from httpx per poll (its "HTTP Request: GET .../ready" lines were INFO)
    assert lines == [("INFO", "not ready: billing (unreachable)")]

    logged.records.clear()
    async with gateway_client(gateway_settings(upstream.url, infra.redis_url)) as gw:
        for _ in range(5):
            assert (await gw.get("/ready")).status_code == 200
    assert [(r.levelname, r.getMessage()) for r in logged.records] == [
        ("INFO", "ready: every service answers /ready")
    ]


def test_a_service_lost_after_the_start_is_a_warning(logged: _Keep) -> None:
    app = FastAPI()
    app.state = GatewayState({"was_ready": None, "ever_ready": False})
    services = {"llm": {"status": "timeout"}, "auth": {"status": "ready"}}
    for down in (["llm"], ["llm"], [], [], ["llm"], ["llm"], []):
        _log_readiness(app, down, services)
    assert [(r.levelname, r.getMessage()) for r in logged.records] == [
        ("INFO", "not ready: llm (timeout)"),  # starting: services come up one by one
        ("INFO", "ready: every service answers /ready"),
        ("WARNING", "not ready: llm (timeout)"),
        ("INFO", "ready: every service answers /ready"),
    ]
