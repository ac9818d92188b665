"""A session ended while Redis is down stays ended once Redis is back.

Real PostgreSQL (requests commit for real: the replay runs in its own transactions) and a
Redis of the test's own that is stopped, hung and started again; the real gateway in front.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from redis.asyncio import Redis
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from starlette.responses import JSONResponse

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.embedded import EmbeddedRedis
from libs.registry import NAMES
from libs.testing import Infra, running
from services.auth import tasks
from services.auth.app import build_app
from services.auth.models import (
    AuditEvent,
    AuthSession,
    Membership,
    Organization,
    PendingRevocation,
    User,
)
from services.auth.sessions.revocations import SESSION_REVOKED_PREFIX, record, replay
from tests.support.faults.redis import eventually, faulty_redis
from tests.support.faults.redis_restart import own_redis, start, stop
from tests.support.servers import serve
from tests.support.stacks.auth import PASSWORD, auth_settings, login, new_email, signup

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

GRACE = 1.5


def _echo() -> FastAPI:
    app = FastAPI()

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app.add_api_route("/{path:path}", echo, methods=["GET", "POST"])
    return app


@pytest.fixture
async def emails(engine: AsyncEngine) -> AsyncIterator[list[str]]:
    """Accounts the test made (committed for real): deleted at the end with their sessions,
    organizations and audit events, and the revocations of those sessions still owed (a test
    failing before the replay ran would leave them to every later replay's count)."""
    made: list[str] = []
    yield made
    async with engine.begin() as conn:
        if made:
            users = select(User.id).where(User.email.in_(made))
            sessions = select(AuthSession.id).where(AuthSession.user_id.in_(users))
            orgs = select(Membership.org_id).where(Membership.user_id.in_(users))
            await conn.execute(
                delete(PendingRevocation).where(PendingRevocation.session_id.in_(sessions))
            )
            await conn.execute(delete(AuditEvent).where(AuditEvent.actor_user_id.in_(users)))
            org_ids = list((await conn.execute(orgs)).scalars())
            await conn.execute(delete(AuditEvent).where(AuditEvent.org_id.in_(org_ids)))
            await conn.execute(delete(User).where(User.email.in_(made)))
            await conn.execute(delete(Organization).where(Organization.id.in_(org_ids)))


async def _pending(engine: AsyncEngine, sids: list[str]) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(PendingRevocation.session_id).where(
                PendingRevocation.session_id.in_([uuid.UUID(s) for s in sids])
            )
        )
        return {str(r[0]) for r in rows}


async def owed(db: AsyncConnection, *sids: uuid.UUID) -> int:
    """How many of these sessions' revocations are still owed (other tests' are not counted)."""
    stmt = text("SELECT count(*) FROM auth.pending_revocations WHERE session_id = ANY(:s)")
    return int(await db.scalar(stmt, {"s": list(sids)}) or 0)


async def _login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    resp = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    tokens: dict[str, str] = resp.json()
    return tokens


async def test_logout_during_redis_outage_stays_revoked_across_an_auth_restart(
    infra: Infra, engine: AsyncEngine, emails: list[str], tmp_path: Path
) -> None:
    with own_redis(tmp_path / "redis") as server:
        await _outage_scenario(server, engine, emails)


async def _outage_scenario(server: EmbeddedRedis, engine: AsyncEngine, emails: list[str]) -> None:
    auth_app = build_app(auth_settings(redis_url=server.url))
    auth = await serve(auth_app)
    echo = await serve(_echo())
    urls = {f"{name}_url": echo.url for name in NAMES}
    urls["auth_url"] = auth.url
    settings = GatewaySettings.model_validate(
        {
            "use_redis": True,
            "redis_url": server.url,
            "redis_retry_seconds": 0.2,
            "session_revocation_grace_seconds": GRACE,
            **urls,
        }
    )
    gw_app = build_gateway(settings)
    try:
        async with running(gw_app):
            gw = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw_app), base_url="http://gw")
            email = new_email()
            emails.append(email)
            reg = await gw.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
            assert reg.status_code == 202, reg.text
            tokens = await _login(gw, email)
            bearer = {"authorization": f"Bearer {tokens['access_token']}"}
            sid = tokens["session_id"]
            # the gateway confirms the session (not revoked) through Redis
            assert (await gw.get("/v1/vector_stores", headers=bearer)).status_code == 200

            await stop(server)
            # "log out" on a stolen device works although Redis is down
            started = time.monotonic()
            resp = await gw.post("/v1/auth/logout", headers=bearer)
            assert resp.status_code == 204, resp.text
            assert time.monotonic() - started < 2.0
            # durable: PostgreSQL holds the revocation and the announcement still owed
            assert await _pending(engine, [sid]) == {sid}

            # the documented bound: a gateway passes a session it confirmed within the grace
            # window; after it, with Redis still down, it refuses what it cannot vouch for
            async def refused_unverifiable() -> bool:
                resp = await gw.get("/v1/vector_stores", headers=bearer)
                return resp.status_code == 503

            waited = await eventually(refused_unverifiable, within=GRACE + 3)
            assert waited <= GRACE + 0.5
            err = (await gw.get("/v1/vector_stores", headers=bearer)).json()["error"]
            assert err["code"] == "session_check_unavailable"

            # the auth process goes away before Redis is back: nobody announced the logout
            await auth.stop()
            await start(server)
            check = Redis.from_url(server.url)
            try:
                assert not await check.exists(f"{SESSION_REVOKED_PREFIX}{sid}")
                assert await _pending(engine, [sid]) == {sid}

                # a new auth process (the same database) announces it on its own
                restarted = build_app(auth_settings(redis_url=server.url))
                async with running(restarted):

                    async def marked() -> bool:
                        return bool(await check.exists(f"{SESSION_REVOKED_PREFIX}{sid}"))

                    await eventually(marked, within=5)
                    ttl = await check.ttl(f"{SESSION_REVOKED_PREFIX}{sid}")
                    assert 0 < ttl <= 900 + 60
                    assert await _pending(engine, [sid]) == set()

                    # and the gateway refuses the old access token for good
                    async def revoked() -> bool:
                        resp = await gw.get("/v1/vector_stores", headers=bearer)
                        return resp.status_code == 401

                    await eventually(revoked, within=5)
                    resp = await gw.get("/v1/vector_stores", headers=bearer)
                    assert resp.json()["error"]["code"] == "session_revoked"
                    # its refresh token is dead too (PostgreSQL's answer, asked of the new
                    # process: the gateway still points at the stopped one)
                    direct = httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=restarted), base_url="http://auth"
                    )
                    async with direct:
                        again = await direct.post(
                            "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                        )
                    assert again.status_code == 401, again.text
            finally:
                await check.aclose()
            await gw.aclose()
    finally:
        await echo.stop()
        if not auth.task.done():
            await auth.stop()


async def test_logout_everywhere_with_redis_hung_is_announced_when_it_answers(
    infra: Infra, engine: AsyncEngine, emails: list[str], tmp_path: Path
) -> None:
    with faulty_redis(tmp_path / "redis") as faulty:
        app = build_app(auth_settings(redis_url=faulty.url))
        async with running(app):
            c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://auth")
            email = new_email()
            emails.append(email)
            first = await signup(c, email)
            second = await login(c, email)
            sids = [str(first.session_id), str(second.session_id)]

            faulty.hang()
            started = time.monotonic()
            resp = await c.post("/v1/auth/logout-all", headers=first.headers)
            assert resp.status_code == 204, resp.text
            # a hung Redis costs the logout at most the guard's deadline, not 5 s
            assert time.monotonic() - started < 1.5
            assert await _pending(engine, sids) == set(sids)
            faulty.resume()

            check = Redis.from_url(faulty.url)
            try:
                # (the write cut short by the deadline may land once Redis resumes: the
                # outbox row is what says the announcement surely went out)
                async def announced() -> bool:
                    return await _pending(engine, sids) == set()

                await eventually(announced, within=8)
                found = await check.exists(*[f"{SESSION_REVOKED_PREFIX}{s}" for s in sids])
                assert int(found) == 2
            finally:
                await check.aclose()
            await c.aclose()


async def test_replay_drops_what_expired_and_keeps_the_rest_alive_only_as_long_as_needed(
    infra: Infra, db: AsyncConnection, redis: Redis
) -> None:
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    now = datetime.now(UTC)
    old, recent = uuid.uuid4(), uuid.uuid4()
    async with factory() as session:
        # revoked 20 minutes ago: every access token of it has expired (900 + 60 s)
        await record(session, [old], now - timedelta(minutes=20), 960)
        await record(session, [recent], now - timedelta(seconds=60), 960)
        # the same session ended twice is one announcement
        await record(session, [recent], now, 960)
        await session.commit()

    assert await replay(factory, redis, now=now) == 1
    assert not await redis.exists(f"{SESSION_REVOKED_PREFIX}{old}")
    ttl = await redis.ttl(f"{SESSION_REVOKED_PREFIX}{recent}")
    assert 895 <= ttl <= 900
    assert await owed(db, old, recent) == 0
    # nothing left: a second replay sends nothing
    assert await replay(factory, redis, now=now) == 0


async def test_the_auth_worker_replays_too(infra: Infra, db: AsyncConnection, redis: Redis) -> None:
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    sid = uuid.uuid4()
    async with factory() as session:
        await record(session, [sid], datetime.now(UTC), 960)
        await session.commit()
    ctx: dict[str, object] = {"db": factory, "redis": redis}
    await tasks.on_startup(ctx)
    try:

        async def marked() -> bool:
            return bool(await redis.exists(f"{SESSION_REVOKED_PREFIX}{sid}"))

        await eventually(marked, within=5)
    finally:
        await tasks.on_shutdown(ctx)
    assert await owed(db, sid) == 0
