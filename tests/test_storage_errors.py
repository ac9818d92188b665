"""PostgreSQL or Redis going away: clients get 503 service_unavailable, not a 500 traceback.

The servers are "down" the way a client sees it: the service's engine or Redis client is
pointed at a port where nothing listens (connection refused), while the app keeps running.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.app import create_app
from libs.settings import ServiceSettings
from libs.testing import Infra, auth_headers, client_for, principal
from services.billing.app import build_app as billing_app
from services.jobs.app import build_app as jobs_app
from services.rag.app import build_app as rag_app
from tests.support.faults.outages import assert_unavailable, database_down, redis_down


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (rag_app, "/v1/files"),
        (jobs_app, "/v1/jobs"),
        (billing_app, "/v1/billing/usage"),
    ],
)
async def test_database_down_is_503_then_recovers(infra: Infra, build: object, path: str) -> None:
    app = build()  # type: ignore[operator]
    who = principal(scopes=["rag:read", "jobs:read", "billing:read"])
    async with client_for(app) as c:
        async with database_down(app):
            resp = await c.get(path, headers=auth_headers(who))
            assert_unavailable(resp, "database")
        # the same process serves again once the database answers
        resp = await c.get(path, headers=auth_headers(who))
        assert resp.status_code == 200, resp.text


async def test_redis_down_loses_no_job_and_is_503_where_redis_is_needed(infra: Infra) -> None:
    app = jobs_app()
    who = principal(scopes=["jobs:read", "jobs:write"])
    admin = principal(scopes=["admin"], org_id=who.org_id)
    async with client_for(app) as c:
        async with redis_down(app):
            # a job the jobs service starts is recorded first: Redis being down does not lose
            # it (the reconciler enqueues it once Redis is back)
            resp = await c.post(
                "/v1/jobs/maintenance/purge",
                json={"older_than_days": 30},
                headers=auth_headers(admin),
            )
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            # cancelling has to reach the worker through Redis: a 503, and nothing changes
            resp = await c.post(f"/v1/jobs/{job_id}/cancel", headers=auth_headers(admin))
            assert_unavailable(resp, "redis")
        listing = await c.get("/v1/jobs", headers=auth_headers(who))
        assert listing.status_code == 200, listing.text
        assert [(j["id"], j["status"]) for j in listing.json()["data"]] == [(job_id, "queued")]


def _toy_app(openai: bool) -> FastAPI:
    settings = ServiceSettings(log_json=False)
    app = create_app(
        service="toy",
        settings=settings,
        use_database=False,
        use_redis=False,
        openai_error_prefixes=["/v1/chat"] if openai else [],
    )

    @app.get("/v1/chat/x")
    async def chat() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    @app.get("/conflict")
    async def conflict() -> None:
        # a database error that is not an outage stays a 500
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    return app


async def test_openai_routes_get_openai_shape_and_other_db_errors_stay_500() -> None:
    app = _toy_app(openai=True)
    async with client_for(app) as c:
        resp = await c.get("/v1/chat/x")
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["type"] == "api_error" and error["code"] == "service_unavailable"
        assert "details" not in error
        resp = await c.get("/conflict")
        assert resp.status_code == 500
        assert resp.json()["error"]["code"] == "internal_error"


async def test_a_value_postgres_cannot_store_is_422_not_500(db: AsyncConnection) -> None:
    """A NUL character in a query parameter reaches no route's validation (JSON bodies are
    refused before that: libs/payload.py) but no PostgreSQL text may hold one."""
    app = jobs_app()
    who = principal(scopes=["jobs:read"])
    async with client_for(app, connection=db) as c:
        resp = await c.get("/v1/jobs", params={"service": "ll\u0000m"}, headers=auth_headers(who))
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"][0]["type"] == "invalid_value"
        assert "0x00" in error["details"][0]["message"]
        # the same request without the NUL works
        resp = await c.get("/v1/jobs", params={"service": "llm"}, headers=auth_headers(who))
        assert resp.status_code == 200


async def test_a_unique_constraint_a_concurrent_request_won_is_409_not_500(
    db: AsyncConnection,
) -> None:
    """A route that checked, found nothing and inserted, while another request inserted the
    same key: PostgreSQL's unique violation (SQLSTATE 23505) answers 409, safe to retry."""
    from sqlalchemy import text

    await db.execute(text("CREATE TEMP TABLE once (k text PRIMARY KEY)"))
    await db.execute(text("INSERT INTO once VALUES ('a')"))
    app = _toy_app(openai=False)

    @app.post("/once")
    async def once() -> None:
        async with db.begin_nested():
            await db.execute(text("INSERT INTO once VALUES ('a')"))

    async with client_for(app) as c:
        resp = await c.post("/once")
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"]["code"] == "conflict"
