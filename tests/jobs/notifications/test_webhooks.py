"""Outgoing webhooks: an event reaches a real local receiver signed so that the standardwebhooks
library verifies it; a failing endpoint is retried on Svix's schedule, logged and replayable;
secret rotation signs with both secrets; private targets are refused outside development;
another organization's endpoints and messages answer 404."""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from libs.notify import JobOutcome, make_event
from libs.queue.names import queue_name
from libs.testing import client_for
from services.jobs.app import build_app
from services.jobs.settings import JobsSettings
from services.jobs.webhooks.delivery import SCHEDULE_S, Refused, check_url, pinned
from services.jobs.webhooks.service import deliver_message
from tests.jobs.notifications.conftest import Stack
from tests.support.servers import serve
from tests.support.stacks.auth import Account, signup


@dataclass
class Receiver:
    url: str
    status: int = 200
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(url="")

    async def hook(request: Request) -> PlainTextResponse:
        rec.got.append((dict(request.headers), await request.body()))
        return PlainTextResponse("thanks" if rec.status < 300 else "nope", rec.status)

    server = await serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))
    rec.url = f"{server.url}/hook"
    try:
        yield rec
    finally:
        await server.stop()


@pytest.fixture
async def jobs(db: AsyncConnection, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The jobs app allowing loopback targets (the receiver runs on 127.0.0.1)."""
    async with client_for(build_app(JobsSettings(webhooks_allow_private=True)), connection=db) as c:
        yield c


def failed(acct: Account) -> Any:
    return make_event(
        "job.failed",
        JobOutcome(job_id="j", service="jobs", function="sleep", status="failed"),
        org_id=acct.org_id,
        user_id=acct.user_id,
        source="jobs",
    )


async def deliver(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, mid: str, *, private: bool = True
) -> str:
    async with httpx.AsyncClient() as http:
        return await deliver_message(
            sessions,
            redis,
            http,
            uuid.UUID(mid),
            timeout_s=5,
            allow_private=private,
            disable_after=timedelta(days=5),
        )


async def registered(
    stack: Stack, jobs: httpx.AsyncClient, receiver: Receiver
) -> tuple[Any, dict[str, Any], str]:
    """A new user's organization with an endpoint at ``receiver``: (user, endpoint, its URL)."""
    alice = await signup(stack.auth)
    endpoint = (
        await jobs.post(
            "/v1/notifications/webhooks", json={"url": receiver.url}, headers=alice.headers
        )
    ).json()
    return alice, endpoint, f"/v1/notifications/webhooks/{endpoint['id']}"


async def test_an_event_arrives_signed_and_verifiable(
    stack: Stack,
    jobs: httpx.AsyncClient,
    receiver: Receiver,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    alice = await signup(stack.auth)
    h = alice.headers
    resp = await jobs.post(
        "/v1/notifications/webhooks",
        json={"url": receiver.url, "kinds": ["job.failed"], "description": "ci"},
        headers=h,
    )
    assert resp.status_code == 201, resp.text
    endpoint = resp.json()
    assert endpoint["secret"].startswith("whsec_")
    ev = failed(alice)
    await stack.fanout.deliver(ev)
    msgs = await jobs.get(f"/v1/notifications/webhooks/{endpoint['id']}/messages", headers=h)
    (m,) = msgs.json()["data"]
    assert (m["kind"], m["status"], m["event_id"]) == ("job.failed", "pending", str(ev.id))
    # its delivery waits in the organization's fair queue
    assert await redis.exists(f"{queue_name('jobs')}:fair:waiting")

    assert await deliver(sessions, redis, m["id"]) == "succeeded"
    ((headers, body),) = receiver.got
    payload = Webhook(endpoint["secret"]).verify(body, headers)
    assert payload["type"] == "job.failed" and payload["data"]["status"] == "failed"
    assert headers["webhook-id"] == f"msg_{uuid.UUID(m['id']).hex}"
    attempts = await jobs.get(
        f"/v1/notifications/webhooks/{endpoint['id']}/messages/{m['id']}/attempts", headers=h
    )
    (a,) = attempts.json()["data"]
    assert (a["attempt"], a["status_code"], a["response"]) == (1, 200, "thanks")
    # delivered once: the same message again does nothing
    assert await deliver(sessions, redis, m["id"]) == "skipped"

    # the test button
    test = await jobs.post(f"/v1/notifications/webhooks/{endpoint['id']}/test", headers=h)
    assert test.status_code == 202 and test.json()["kind"] == "webhook.test"
    assert await deliver(sessions, redis, test.json()["id"]) == "succeeded"
    assert Webhook(endpoint["secret"]).verify(receiver.got[-1][1], receiver.got[-1][0])


async def test_a_failing_endpoint_is_retried_on_schedule_and_can_be_replayed(
    stack: Stack,
    jobs: httpx.AsyncClient,
    receiver: Receiver,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    alice, _, base = await registered(stack, jobs, receiver)
    h = alice.headers
    receiver.status = 500
    await stack.fanout.deliver(failed(alice))
    (m,) = (await jobs.get(f"{base}/messages", headers=h)).json()["data"]
    before = time.time()
    assert await deliver(sessions, redis, m["id"]) == "pending"
    # the next try is deferred by the schedule's second step (5 s)
    deferred = [
        score
        for job_id, score in await redis.zrange(queue_name("jobs"), 0, -1, withscores=True)
        if job_id.decode().startswith(f"whmsg-{m['id']}")
    ]
    assert len(deferred) == 1
    assert before + SCHEDULE_S[1] - 1 <= deferred[0] / 1000 <= time.time() + SCHEDULE_S[1] + 1
    assert await deliver(sessions, redis, m["id"]) == "pending"
    got = (await jobs.get(f"{base}/messages", headers=h)).json()["data"][0]
    assert got["attempts"] == 2
    attempts = (await jobs.get(f"{base}/messages/{m['id']}/attempts", headers=h)).json()["data"]
    assert [(a["attempt"], a["status_code"], a["response"]) for a in attempts] == [
        (1, 500, "nope"),
        (2, 500, "nope"),
    ]

    receiver.status = 200
    replay = await jobs.post(f"{base}/messages/{m['id']}/replay", headers=h)
    assert replay.status_code == 202 and replay.json()["status"] == "pending"
    assert await deliver(sessions, redis, m["id"]) == "succeeded"
    assert len(receiver.got) == 3


async def test_a_rotated_secret_and_the_previous_one_both_verify(
    stack: Stack,
    jobs: httpx.AsyncClient,
    receiver: Receiver,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    alice, endpoint, base = await registered(stack, jobs, receiver)
    h = alice.headers
    rotated = (await jobs.post(f"{base}/rotate-secret", json={"grace_hours": 1}, headers=h)).json()
    assert rotated["secret"] != endpoint["secret"] and rotated["previous_expires_at"]
    test = (await jobs.post(f"{base}/test", headers=h)).json()
    await deliver(sessions, redis, test["id"])
    headers, body = receiver.got[-1]
    for secret in (endpoint["secret"], rotated["secret"]):
        assert Webhook(secret).verify(body, headers)["type"] == "webhook.test"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://localhost/x"],
)
async def test_private_targets_are_refused_outside_development(
    stack: Stack, url: str, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await signup(stack.auth)
    resp = await stack.jobs.post(
        "/v1/notifications/webhooks", json={"url": url}, headers=alice.headers
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_url"


async def test_delivery_checks_the_address_again(
    stack: Stack,
    jobs: httpx.AsyncClient,
    receiver: Receiver,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Registered while allowed (or before the name moved to a private address): refused at
    delivery time, nothing sent."""
    alice = await signup(stack.auth)
    h = alice.headers
    endpoint = (
        await jobs.post("/v1/notifications/webhooks", json={"url": receiver.url}, headers=h)
    ).json()
    test = (await jobs.post(f"/v1/notifications/webhooks/{endpoint['id']}/test", headers=h)).json()
    assert await deliver(sessions, redis, test["id"], private=False) == "pending"
    assert receiver.got == []
    base = f"/v1/notifications/webhooks/{endpoint['id']}"
    (a,) = (await jobs.get(f"{base}/messages/{test['id']}/attempts", headers=h)).json()["data"]
    assert a["status_code"] is None and a["error"].startswith("refused")


async def test_bad_input_and_other_organizations(
    stack: Stack, jobs: httpx.AsyncClient, receiver: Receiver
) -> None:
    alice, bob = await signup(stack.auth), await signup(stack.auth)
    for body in (
        {"url": "ftp://example.com/x"},
        {"url": receiver.url, "kinds": ["nope"]},
        # malformed hosts: refused when registered, even where private targets are allowed
        {"url": "http://exa mple.com/"},
        {"url": "http://256.256.256.256/"},
        {"url": "http://-bad-.example/"},
    ):
        resp = await jobs.post("/v1/notifications/webhooks", json=body, headers=alice.headers)
        assert resp.status_code == 400, resp.text
    endpoint = (
        await jobs.post(
            "/v1/notifications/webhooks", json={"url": receiver.url}, headers=alice.headers
        )
    ).json()
    test = (
        await jobs.post(f"/v1/notifications/webhooks/{endpoint['id']}/test", headers=alice.headers)
    ).json()
    base = f"/v1/notifications/webhooks/{endpoint['id']}"
    for path in (base, f"{base}/messages", f"{base}/messages/{test['id']}/attempts"):
        assert (await jobs.get(path, headers=bob.headers)).status_code == 404
    replay = await jobs.post(f"{base}/messages/{test['id']}/replay", headers=bob.headers)
    assert replay.status_code == 404
    patch = await jobs.patch(base, json={"description": "mine"}, headers=bob.headers)
    assert patch.status_code == 404
    changed = await jobs.patch(
        base, json={"kinds": ["job.failed"], "description": "ops"}, headers=alice.headers
    )
    assert (changed.json()["kinds"], changed.json()["description"]) == (["job.failed"], "ops")
    refused = await jobs.patch(base, json={"url": "file:///etc/passwd"}, headers=alice.headers)
    assert refused.status_code == 400
    assert (await jobs.get("/v1/notifications/webhooks", headers=bob.headers)).json()["data"] == []


async def test_the_connection_goes_to_the_address_checked(receiver: Receiver) -> None:
    """A name checked once is not resolved again by the client (DNS rebinding): the request
    goes to the checked address, Host (and TLS's SNI) still naming the host."""
    assert pinned("https://example.com:8443/x?y=1", "93.184.216.34") == (
        "https://93.184.216.34:8443/x?y=1",
        {"host": "example.com:8443"},
        {"sni_hostname": "example.com"},
    )
    assert pinned("http://example.com/x", "2606:2800:220:1::1")[0] == (
        "http://[2606:2800:220:1::1]/x"
    )
    port = receiver.url.split(":")[2].split("/")[0]
    named = f"http://hooks.invalid:{port}/hook"  # a name no resolver knows
    target, headers, extensions = pinned(named, "127.0.0.1")
    async with httpx.AsyncClient() as http:
        resp = await http.post(target, content=b"{}", headers=headers, extensions=extensions)
    assert resp.status_code == 200
    assert receiver.got[-1][0]["host"] == f"hooks.invalid:{port}"


async def test_an_endpoint_failing_for_days_is_disabled_and_admins_are_told(
    stack: Stack,
    jobs: httpx.AsyncClient,
    receiver: Receiver,
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    alice, endpoint, base = await registered(stack, jobs, receiver)
    h = alice.headers
    receiver.status = 503
    test = (await jobs.post(f"{base}/test", headers=h)).json()
    async with httpx.AsyncClient() as http:
        status = await deliver_message(
            sessions,
            redis,
            http,
            uuid.UUID(test["id"]),
            timeout_s=5,
            allow_private=True,
            disable_after=timedelta(0),  # "days of failure" already behind it
        )
    assert status == "pending"
    got = (await jobs.get(base, headers=h)).json()
    assert got["disabled_at"] is not None and got["failing_since"] is not None
    told = []
    for key in await redis.keys("arq:job:notify-*"):
        raw = await redis.get(key)
        assert raw is not None
        ev = pickle.loads(raw)["k"]["event"]
        if ev["kind"] == "webhook.endpoint_disabled":
            told.append(ev)
    assert [(e["org_id"], e["data"]["endpoint_id"]) for e in told] == [
        (str(alice.org_id), endpoint["id"])
    ]
    # a disabled endpoint gets no new messages; enabling it again clears it
    await stack.fanout.deliver(failed(alice))
    assert len((await jobs.get(f"{base}/messages", headers=h)).json()["data"]) == 1
    enabled = await jobs.post(f"{base}/enable", headers=h)
    assert enabled.json()["disabled_at"] is None


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("https://hooks.example.com/x", True),
        ("http://127.0.0.1:9/hook", True),
        ("http://[::1]:8080/", True),
        ("https://例子.测试/hook", True),  # an internationalised name, through IDNA
        ("http://exa mple.com/", False),
        ("http://256.256.256.256/", False),
        ("http://a..b/", False),
        ("http://under_score.example/", True),  # not in hostnames, but in real names
    ],
)
def test_host_syntax(url: str, valid: bool) -> None:
    if valid:
        assert check_url(url)[0]
    else:
        with pytest.raises(Refused):
            check_url(url)
