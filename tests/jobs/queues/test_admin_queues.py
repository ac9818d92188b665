"""GET /v1/admin/queues: every queue across organizations, for platform administrators only
(the jobs service asks auth, the real app here), and the queue monitor's gauges."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.identity import Principal
from libs.queue import enqueue_prepared, prepare_job
from libs.queue.names import WORKER_KEY_PREFIX, queue_name
from libs.testing import auth_headers, client_for, principal
from services.auth.app import build_app as build_auth
from services.auth.models import User
from services.jobs.app import build_app
from services.jobs.queues import service as queues_service
from services.jobs.queues.metrics import QUEUE_JOBS, QUEUE_WORKERS
from services.jobs.queues.monitor import QueueMonitor
from services.jobs.state import JobsState
from tests.support.stacks.auth import auth_settings, signup

SVC = "queuestest"


@pytest.fixture
async def stack(
    db: AsyncConnection, redis: Redis
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """auth and jobs, the jobs service calling auth in-process."""
    queues_service._checked.clear()
    async with (
        client_for(build_auth(auth_settings()), connection=db) as auth,
        client_for(build_app(), connection=db) as jobs,
    ):
        app = jobs._transport.app  # type: ignore[attr-defined]
        JobsState.of_app(app).http = auth
        yield auth, jobs


async def test_platform_admins_see_every_queue(
    stack: tuple[httpx.AsyncClient, httpx.AsyncClient],
    db: AsyncConnection,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    auth, jobs = stack
    admin, org_admin = await signup(auth), await signup(auth)
    await db.execute(update(User).where(User.id == admin.user_id).values(is_platform_admin=True))
    flooder, other = str(uuid.uuid4()), str(uuid.uuid4())
    await enqueue_prepared(
        redis,
        [
            *(prepare_job(service=SVC, function="work", org_id=flooder) for _ in range(5)),
            prepare_job(service=SVC, function="work", org_id=other, priority="high"),
        ],
    )
    beat = {"id": "w1", "queue": queue_name(SVC), "running": 2, "max_jobs": 10, "pid": 1}
    await redis.set(WORKER_KEY_PREFIX + "w1", orjson.dumps(beat), ex=60)

    resp = await jobs.get("/v1/admin/queues", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    queues = {q["queue"]: q for q in resp.json()["queues"]}
    assert {queue_name(s) for s in ("auth", "llm", "rag", "jobs", "billing")} <= set(queues)
    q = queues[queue_name(SVC)]
    assert (q["fair"], q["ready"], q["running"]) == (6, 0, 2)
    assert [w["id"] for w in q["workers"]] == ["w1"]
    assert q["oldest_waiting_s"] >= 0
    assert q["top_waiting"][0] == {
        "org_id": flooder,
        "function": "work",
        "priority": "normal",
        "waiting": 5,
    }
    # the retention schedule the jobs worker declares, once synced, shows too
    assert "schedules" in resp.json()

    # an organization's admin is not a platform admin; an API key never is
    for headers, code in (
        (org_admin.headers, "platform_admin_required"),
        (
            auth_headers(
                Principal(
                    user_id=admin.user_id,
                    org_id=admin.org_id,
                    key_id=uuid.uuid4(),
                    scopes=["admin"],
                )
            ),
            "platform_admin_required",
        ),
        (auth_headers(principal(roles=["member"], scopes=["jobs:read"])), "insufficient_scope"),
    ):
        denied = await jobs.get("/v1/admin/queues", headers=headers)
        assert denied.status_code == 403, denied.text
        assert denied.json()["error"]["code"] == code

    states = await QueueMonitor(redis, sessions).run_once()
    assert any(s.queue == queue_name(SVC) for s in states)
    assert QUEUE_JOBS.labels(queue_name(SVC), "fair")._value.get() == 6
    assert QUEUE_WORKERS.labels(queue_name(SVC))._value.get() == 1


async def test_auth_unreachable_is_a_503_not_a_pass(db: AsyncConnection, redis: Redis) -> None:
    queues_service._checked.clear()
    async with client_for(build_app(), connection=db) as jobs:
        app = jobs._transport.app  # type: ignore[attr-defined]
        JobsState.of_app(app).settings.auth_url = "http://127.0.0.1:9"
        p = principal()
        resp = await jobs.get("/v1/admin/queues", headers=auth_headers(p))
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "auth_unavailable"
