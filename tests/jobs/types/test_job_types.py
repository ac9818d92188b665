"""Job types: declared by workers, listed by GET /v1/jobs/types, started by POST /v1/jobs with
validated arguments (422 naming the bad field), recorded before they are enqueued."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.queue import JobContext, RetryPolicy, fair, job
from libs.queue.names import queue_name
from libs.testing import Infra, auth_headers, principal
from services.jobs.jobs.recorder import EventConsumer
from tests.support.job_types import publish_types
from tests.support.workers import run_burst

SVC = "typestest"
ran: list[tuple[str | None, str, int]] = []


@job(
    user_startable=True,
    schedulable=True,
    concurrency=3,
    retry=RetryPolicy(max_tries=4, backoff_s=0.5),
    description="Re-index a knowledge base",
)
async def reindex(ctx: JobContext, knowledge_base: str, depth: int = 1) -> int:
    ran.append((ctx.org_id, knowledge_base, depth))
    return depth


@job
async def bookkeeping(ctx: JobContext, n: int) -> None:
    """Platform work users do not start."""


@job(user_startable=True, scope="admin")
async def wipe(ctx: JobContext) -> None:
    """Only an organization's admins start this."""


FUNCTIONS = [reindex, bookkeeping, wipe]


async def test_types_are_listed_with_their_argument_schema_and_policy(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], api: httpx.AsyncClient
) -> None:
    await publish_types(redis, sessions, SVC, FUNCTIONS)
    p = principal(roles=["member"], scopes=["jobs:read"])
    resp = await api.get("/v1/jobs/types", headers=auth_headers(p))
    assert resp.status_code == 200, resp.text
    types = {t["type"]: t for t in resp.json()["data"]}
    t = types[f"{SVC}.reindex"]
    assert t["description"] == "Re-index a knowledge base"
    assert t["user_startable"] and t["schedulable"] and t["concurrency"] == 3
    assert t["scope"] == "jobs:write"
    assert t["retry"]["max_tries"] == 4 and t["retry"]["retry_on"] == ["Exception"]
    schema = t["args_schema"]
    assert schema["required"] == ["knowledge_base"]
    assert schema["properties"]["depth"]["type"] == "integer"
    assert not types[f"{SVC}.bookkeeping"]["user_startable"]
    one = await api.get(f"/v1/jobs/types/{SVC}.reindex", headers=auth_headers(p))
    assert one.status_code == 200 and one.json()["name"] == "reindex"
    for missing in (f"{SVC}.nope", "nodot", "a."):
        resp = await api.get(f"/v1/jobs/types/{missing}", headers=auth_headers(p))
        assert resp.status_code == 404, (missing, resp.text)
        assert resp.json()["error"]["code"] == "job_type_not_found"


async def test_starting_a_job_validates_its_arguments_and_records_it_first(
    infra: Infra,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
    recorder: EventConsumer,
    api: httpx.AsyncClient,
) -> None:
    ran.clear()
    await publish_types(redis, sessions, SVC, FUNCTIONS)
    member = principal(roles=["member"], scopes=["jobs:read", "jobs:write"])
    headers = auth_headers(member)
    for arguments, field in (
        ({}, "body.arguments.knowledge_base"),
        ({"knowledge_base": "kb", "depth": "deep"}, "body.arguments.depth"),
        ({"knowledge_base": "kb", "extra": 1}, "body.arguments.extra"),
    ):
        resp = await api.post(
            "/v1/jobs", json={"type": f"{SVC}.reindex", "arguments": arguments}, headers=headers
        )
        assert resp.status_code == 422, resp.text
        err = resp.json()["error"]
        assert err["code"] == "validation_error"
        assert [d["field"] for d in err["details"]] == [field], err
    # not a type users start, an admin's type, an unknown type
    for body, status, code in (
        ({"type": f"{SVC}.bookkeeping", "arguments": {"n": 1}}, 403, "job_type_not_startable"),
        ({"type": f"{SVC}.wipe"}, 403, "insufficient_scope"),
        ({"type": f"{SVC}.unknown"}, 404, "job_type_not_found"),
    ):
        resp = await api.post("/v1/jobs", json=body, headers=headers)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), resp.text

    resp = await api.post(
        "/v1/jobs",
        json={"type": f"{SVC}.reindex", "arguments": {"knowledge_base": "kb1", "depth": 2}},
        headers=headers,
    )
    assert resp.status_code == 202, resp.text
    started = resp.json()
    assert started["status"] == "queued" and started["function"] == "reindex"
    assert started["kwargs"] == {"knowledge_base": "kb1", "depth": 2}
    # recorded in this transaction, waiting its organization's turn in Redis
    assert (await fair.depth(redis, queue_name(SVC))).fair == 1
    await run_burst(infra.redis_url, SVC, FUNCTIONS)
    await recorder.drain()
    done = (await api.get(f"/v1/jobs/{started['id']}", headers=headers)).json()
    assert done["status"] == "succeeded" and done["max_tries"] == 4
    assert ran == [(str(member.org_id), "kb1", 2)]
    # a reader may list but not start
    reader = principal(org_id=member.org_id, roles=["viewer"], scopes=["jobs:read"])
    resp = await api.post(
        "/v1/jobs",
        json={"type": f"{SVC}.reindex", "arguments": {"knowledge_base": "x"}},
        headers=auth_headers(reader),
    )
    assert resp.status_code == 403
