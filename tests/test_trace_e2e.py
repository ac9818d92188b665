"""End to end on real processes' code: a user signs up through the gateway, and a trace that
enters at the gateway reaches the service's log and the job the service enqueues."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.logging import JsonFormatter
from libs.testing import Infra
from services.auth.app import build_app as build_auth
from services.auth.settings import AuthSettings
from services.jobs.app import build_app as build_jobs
from services.jobs.tasks import purge_finished_jobs
from tests.support.servers import serve
from tests.support.workers import events_for, run_burst


class _Lines(logging.Handler):
    """Collects every log record as the JSON line production would print."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[_Lines]:
    """Attach with ``capture()`` once the apps are built (building one resets the root logger)."""
    handler = _Lines()
    yield handler
    logging.getLogger().removeHandler(handler)


def capture(handler: _Lines) -> None:
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


async def test_trace_id_reaches_service_log_and_job(
    infra: Infra, redis: Redis, log_lines: _Lines
) -> None:
    auth = await serve(build_auth(AuthSettings(login_failures_per_ip=1000)))
    jobs = await serve(build_jobs())
    gateway = await serve(build_gateway(GatewaySettings(auth_url=auth.url, jobs_url=jobs.url)))
    capture(log_lines)
    trace_id = secrets.token_hex(16)
    email, password = f"trace-{secrets.token_hex(5)}@example.com", "Tr0ub4dor&3-horse"
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            creds = {"email": email, "password": password}
            assert (await client.post("/v1/auth/register", json=creds)).status_code == 202
            login = await client.post("/v1/auth/login", json=creds)
            assert login.status_code == 200, login.text
            # the owner of the personal organization holds the admin scope
            resp = await client.post(
                "/v1/jobs/maintenance/purge",
                json={"older_than_days": 30},
                headers={
                    "authorization": f"Bearer {login.json()['access_token']}",
                    "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
                },
            )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        request_id = resp.headers["x-request-id"]
    finally:
        await gateway.stop()
        await jobs.stop()
        await auth.stop()

    # the jobs service logged the request (its route template, not the gateway's prefix)
    # under the caller's trace and the gateway's request id
    service_lines = [
        line for line in log_lines.lines if line.get("route") == "/v1/jobs/maintenance/purge"
    ]
    assert service_lines, log_lines.lines
    assert {line.get("trace_id") for line in service_lines} == {trace_id}
    assert {line.get("request_id") for line in service_lines} == {request_id}

    # the job carries the trace: its queued event, and the log lines it writes while running
    queued = await events_for(redis, job_id)
    print("DEBUG", job_id, await redis.keys("*"), await redis.xrange("aistack:job-events"))
    assert queued and queued[0].trace_id == trace_id
    log_lines.lines.clear()
    await run_burst(infra.redis_url, "jobs", [purge_finished_jobs], database_url=infra.database_url)
    ran = [e for e in await events_for(redis, job_id) if e.status in ("running", "succeeded")]
    assert [e.status for e in ran] == ["running", "succeeded"]
    assert all(e.trace_id == trace_id for e in ran)
    job_lines = [line for line in log_lines.lines if line.get("job_id") == job_id]
    assert job_lines, log_lines.lines
    assert all(line.get("trace_id") == trace_id for line in job_lines)
    assert all(line.get("request_id") == request_id for line in job_lines)
    assert job_lines[-1]["job_outcome"] == "succeeded"
