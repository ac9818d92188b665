"""The gateway with its Redis hung (SIGSTOP) or killed: requests are answered at once with the
decided behaviour, never after the 5 s socket timeout per Redis call; once Redis is back it is
used again.

Decided per call site (gateway/apikeys.py, ratelimit.py, revocations.py): API keys resolve
straight from the auth service; request limits fail open to per-process limits; a session is
checked fail-closed (503) unless this process confirmed it within the grace period.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from libs.telemetry import metrics_text
from tests.support.faults.redis import FaultyRedis, eventually, faulty_redis
from tests.support.stacks.echo import Upstream, gateway_client, gateway_settings

# a functional bound for "did not wait on Redis" (one Redis call used to wait 5 s): generous,
# not a benchmark
QUICK_S = 2.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultyRedis]:
    with faulty_redis(tmp_path / "redis") as redis:
        yield redis


async def _timed(gw: httpx.AsyncClient, method: str, path: str, **kw: object) -> httpx.Response:
    started = time.monotonic()
    resp = await gw.request(method, path, **kw)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert took < QUICK_S, f"{method} {path} took {took:.2f}s"
    return resp


def _available(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('aistack_redis_available{client="gateway"}'):
            return float(line.split()[-1])
    raise AssertionError("no aistack_redis_available gauge")


@pytest.mark.parametrize("fault", ["hung", "killed"])
async def test_requests_do_not_wait_on_a_sick_redis_and_recover(
    upstream: Upstream, server: FaultyRedis, fault: str
) -> None:
    auth = upstream.auth
    key, _ = auth.add_api_key(scopes=["jobs:read", "llm:use"], rpm_limit=100)
    small, _ = auth.add_api_key(scopes=["jobs:read"], rpm_limit=2)
    confirmed = {"authorization": f"Bearer {auth.token()}"}
    unconfirmed = {"authorization": f"Bearer {auth.token()}"}
    settings = gateway_settings(
        upstream.url,
        server.url,
        redis_timeout_seconds=0.2,
        redis_retry_seconds=0.3,
        # every request resolves its key (no in-process entry): Redis cache, else auth
        api_key_local_ttl=0,
    )
    async with gateway_client(settings) as gw:
        resp = await gw.get("/v1/jobs", headers={"x-api-key": key})
        assert resp.status_code == 200 and resp.headers["ratelimit-limit"] == "100"
        # this process checks the session's revocation in Redis (healthy): not revoked
        assert (await gw.get("/v1/jobs", headers=confirmed)).status_code == 200
        introspected = auth.introspections

        server.hang() if fault == "hung" else server.kill()
        try:
            started = time.monotonic()
            for _ in range(10):
                resp = await _timed(gw, "GET", "/v1/jobs", headers={"x-api-key": key})
                # rate limits fail open (per-process counts, no RateLimit-* headers)
                assert resp.status_code == 200, resp.text
                assert "ratelimit-limit" not in resp.headers
            # ten requests, at most one Redis deadline in all
            assert time.monotonic() - started < QUICK_S
            # the key's Redis cache is skipped: auth answered every time
            assert auth.introspections == introspected + 10

            # a session confirmed a moment ago stays usable (grace period)
            resp = await _timed(gw, "GET", "/v1/jobs", headers=confirmed)
            assert resp.status_code == 200, resp.text
            # one this process cannot vouch for is refused: it may have been revoked
            resp = await _timed(gw, "GET", "/v1/jobs", headers=unconfirmed)
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "session_check_unavailable"
            assert resp.headers["retry-after"] == "1"
            # on the OpenAI routes, in OpenAI's shape
            resp = await _timed(gw, "POST", "/v1/chat/completions", json={}, headers=unconfirmed)
            assert resp.status_code == 503
            err = resp.json()["error"]
            assert err["code"] == "session_check_unavailable" and err["type"] == "api_error"
            assert "param" in err

            # the limits still hold, per process
            statuses = [
                (await _timed(gw, "GET", "/v1/jobs", headers={"x-api-key": small})).status_code
                for _ in range(3)
            ]
            assert statuses == [200, 200, 429]
            assert _available(metrics_text()) == 0
        finally:
            server.resume() if fault == "hung" else server.start()

        async def limits_counted_again() -> bool:
            resp = await gw.get("/v1/jobs", headers={"x-api-key": key})
            return resp.status_code == 200 and "ratelimit-limit" in resp.headers

        await eventually(limits_counted_again)
        resp = await gw.get("/v1/jobs", headers=unconfirmed)
        assert resp.status_code == 200, resp.text
        assert _available(metrics_text()) == 1
