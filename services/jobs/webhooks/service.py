"""Webhook endpoints of the caller's organization (admins), their messages and attempts; and
the two halves of delivery: an event becomes one message per subscribed endpoint, and a
message is POSTed by the ``deliver_webhook`` job, again on Svix's schedule until it succeeds.

Delivery jobs carry the organization, so they wait in its fair queue (libs/queue/fair.py): an
organization whose endpoint is slow or failing holds its own turns, never another's.
"""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionFactory, session_scope
from libs.errors import BadRequest, NotFound
from libs.identity import Principal
from libs.notify import KINDS, EndpointDisabled, Event, WebhookTest, emit_event, make_event
from libs.queue import enqueue
from services.jobs.notifications.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from services.jobs.webhooks.delivery import SCHEDULE_S, Refused, check_target, post
from services.jobs.webhooks.repository import WebhookRepository
from services.jobs.webhooks.schemas import EndpointCreate, EndpointUpdate

log = logging.getLogger("aistack.jobs.webhooks")
DELIVER = "deliver_webhook"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _now() -> datetime:
    return datetime.now(UTC)


def message_body(ev: Event) -> dict[str, Any]:
    """What an endpoint receives (Standard Webhooks' ``type``, ``timestamp``, ``data``)."""
    return {
        "id": str(ev.id),
        "type": ev.kind,
        "timestamp": ev.occurred_at.isoformat(),
        "org_id": str(ev.org_id) if ev.org_id else None,
        "subject": ev.subject,
        "data": ev.data,
    }


async def schedule_delivery(
    session: AsyncSession, redis: Redis, m_id: uuid.UUID, org_id: uuid.UUID, delay_s: float
) -> None:
    """Enqueue the message's next try once ``session`` commits (the organization's fair queue
    when it is due now)."""
    await enqueue(
        session,
        redis,
        service="jobs",
        function=DELIVER,
        kwargs={"message_id": str(m_id)},
        job_id=f"whmsg-{m_id}-{uuid.uuid4().hex[:8]}",
        org_id=org_id,
        defer_by=delay_s or None,
    )


async def messages_for_event(session: AsyncSession, redis: Redis, ev: Event) -> int:
    """One message per endpoint of the event's organization that wants its kind."""
    return await messages_for_events(session, redis, [ev])


async def messages_for_events(session: AsyncSession, redis: Redis, events: list[Event]) -> int:
    """:func:`messages_for_event` for many events: one query for their organizations'
    endpoints."""
    wanted = [
        ev
        for ev in events
        if ev.org_id is not None
        and ev.kind != "webhook.test"
        and (spec := KINDS.get(ev.kind)) is not None
        and spec.webhook
    ]
    if not wanted:
        return 0
    repo = WebhookRepository(session)
    by_org: dict[uuid.UUID, list[WebhookEndpoint]] = {}
    for endpoint in await repo.endpoints_of({ev.org_id for ev in wanted if ev.org_id}):
        by_org.setdefault(endpoint.org_id, []).append(endpoint)
    made = 0
    for ev in wanted:
        assert ev.org_id is not None
        for endpoint in by_org.get(ev.org_id, []):
            if endpoint.disabled_at is not None or (
                endpoint.kinds and ev.kind not in endpoint.kinds
            ):
                continue
            mid = await repo.add_message(endpoint, ev.id, ev.kind, message_body(ev))
            if mid is not None:
                await schedule_delivery(session, redis, mid, ev.org_id, 0)
                made += 1
    return made


async def deliver_message(
    sessions: SessionFactory,
    redis: Redis,
    http: httpx.AsyncClient,
    mid: uuid.UUID,
    *,
    timeout_s: float,
    allow_private: bool,
    disable_after: timedelta,
) -> str:
    """One try of a message; its status afterwards (``skipped`` when nothing was due)."""
    async with session_scope(sessions) as session:
        repo = WebhookRepository(session)
        m = await repo.message_by_id(mid)
        endpoint = await repo.endpoint_by_id(m.endpoint_id) if m else None
        if m is None or endpoint is None or m.status != "pending":
            return "skipped"
        if endpoint.disabled_at is not None and m.kind != "webhook.test":
            return "skipped"
        now = _now()
        valid = [endpoint.secret]
        if endpoint.previous_secret and (endpoint.previous_expires_at or now) > now:
            valid.append(endpoint.previous_secret)
        url, attempt = endpoint.url, m.attempts + 1
        body = orjson.dumps(m.payload)
    # the POST happens outside any transaction
    outcome = await post(
        http,
        url,
        msg_id=f"msg_{mid.hex}",
        at=now,
        body=body,
        secrets=valid,
        timeout_s=timeout_s,
        allow_private=allow_private,
    )
    async with session_scope(sessions) as session:
        repo = WebhookRepository(session)
        m = await repo.message_by_id(mid)
        # the endpoint's row is locked only to change it (a success of a healthy endpoint
        # changes nothing there): its concurrent deliveries do not queue on it
        healthy = outcome.ok
        endpoint = await repo.endpoint_by_id(m.endpoint_id, lock=not healthy) if m else None
        if endpoint is not None and healthy and endpoint.failing_since is not None:
            endpoint = await repo.endpoint_by_id(m.endpoint_id, lock=True) if m else None
        if m is None or endpoint is None:
            return "skipped"
        session.add(
            WebhookAttempt(
                message_id=mid,
                endpoint_id=endpoint.id,
                attempt=attempt,
                status_code=outcome.status_code,
                error=outcome.error,
                latency_ms=outcome.latency_ms,
                response=outcome.response,
            )
        )
        m.attempts = attempt
        if outcome.ok:
            m.status, m.next_attempt_at = "succeeded", None
            if endpoint.failing_since is not None:
                endpoint.failing_since = None
            return m.status
        endpoint.failing_since = endpoint.failing_since or now
        if attempt < len(SCHEDULE_S):
            delay = SCHEDULE_S[attempt]
            m.next_attempt_at = now + timedelta(seconds=delay)
            await schedule_delivery(session, redis, mid, m.org_id, delay)
        else:
            m.status, m.next_attempt_at = "failed", None
        if endpoint.disabled_at is None and now - endpoint.failing_since >= disable_after:
            endpoint.disabled_at = now
            await emit_event(
                session,
                redis,
                make_event(
                    "webhook.endpoint_disabled",
                    EndpointDisabled(
                        endpoint_id=endpoint.id, url=url, failing_since=endpoint.failing_since
                    ),
                    org_id=endpoint.org_id,
                    key=f"{endpoint.id}:{now.isoformat()}",
                    source="jobs",
                ),
            )
        return m.status


class WebhookService:
    def __init__(
        self, session: AsyncSession, principal: Principal, redis: Redis, *, allow_private: bool
    ) -> None:
        self.session = session
        self.redis = redis
        self.repo = WebhookRepository(session)
        self.org_id = principal.require_org()
        self.user_id = principal.user_id
        self.allow_private = allow_private

    async def _check(self, url: str | None, kinds: list[str] | None) -> None:
        for k in kinds or []:
            if k not in KINDS or not KINDS[k].webhook:
                raise BadRequest(f"{k!r} is not a kind webhooks carry", code="unknown_kind")
        if url is None:
            return
        try:
            await check_target(url, allow_private=self.allow_private)
        except Refused as exc:
            raise BadRequest(f"URL refused: {exc}", code="invalid_url") from exc

    async def create(self, body: EndpointCreate) -> WebhookEndpoint:
        await self._check(body.url, body.kinds)
        endpoint = WebhookEndpoint(
            org_id=self.org_id,
            url=body.url,
            kinds=sorted(set(body.kinds)),
            description=body.description,
            secret=new_secret(),
            created_by=self.user_id,
        )
        self.session.add(endpoint)
        await self.session.flush()
        await self.session.refresh(endpoint)
        return endpoint

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        return await self.repo.endpoints(self.org_id)

    async def get(self, eid: uuid.UUID) -> WebhookEndpoint:
        endpoint = await self.repo.endpoint(self.org_id, eid)
        if endpoint is None:
            raise NotFound("No such webhook endpoint", code="webhook_endpoint_not_found")
        return endpoint

    async def update(self, eid: uuid.UUID, body: EndpointUpdate) -> WebhookEndpoint:
        endpoint = await self.get(eid)
        await self._check(body.url, body.kinds)
        if body.url is not None:
            endpoint.url = body.url
        if body.kinds is not None:
            endpoint.kinds = sorted(set(body.kinds))
        if body.description is not None:
            endpoint.description = body.description
        return endpoint

    async def delete(self, eid: uuid.UUID) -> None:
        await self.repo.delete_endpoint(await self.get(eid))

    async def enable(self, eid: uuid.UUID) -> WebhookEndpoint:
        endpoint = await self.get(eid)
        endpoint.disabled_at = endpoint.failing_since = None
        return endpoint

    async def rotate(self, eid: uuid.UUID, grace_hours: float) -> WebhookEndpoint:
        endpoint = await self.get(eid)
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_expires_at = _now() + timedelta(hours=grace_hours)
        endpoint.secret = new_secret()
        return endpoint

    async def send_test(self, eid: uuid.UUID) -> WebhookMessage:
        endpoint = await self.get(eid)
        ev = make_event(
            "webhook.test",
            WebhookTest(endpoint_id=endpoint.id, message="A test event from aistack"),
            org_id=self.org_id,
            actor_id=self.user_id,
            source="jobs",
        )
        mid = await self.repo.add_message(endpoint, ev.id, ev.kind, message_body(ev))
        assert mid is not None  # a fresh event id
        await schedule_delivery(self.session, self.redis, mid, self.org_id, 0)
        return await self._message(endpoint.id, mid)

    async def _message(self, eid: uuid.UUID, mid: uuid.UUID) -> WebhookMessage:
        m = await self.repo.message(eid, mid)
        if m is None:
            raise NotFound("No such webhook message", code="webhook_message_not_found")
        return m

    async def messages(
        self, eid: uuid.UUID, limit: int, offset: int
    ) -> tuple[list[WebhookMessage], bool]:
        endpoint = await self.get(eid)
        return await self.repo.messages(endpoint.id, limit, offset)

    async def attempts(self, eid: uuid.UUID, mid: uuid.UUID) -> list[WebhookAttempt]:
        endpoint = await self.get(eid)
        m = await self._message(endpoint.id, mid)
        return await self.repo.attempts(m.id)

    async def replay(self, eid: uuid.UUID, mid: uuid.UUID) -> WebhookMessage:
        """Send a message once more now, whatever became of it (its log keeps counting)."""
        endpoint = await self.get(eid)
        m = await self.repo.message(endpoint.id, mid, lock=True)
        if m is None:
            raise NotFound("No such webhook message", code="webhook_message_not_found")
        m.status, m.next_attempt_at = "pending", None
        await schedule_delivery(self.session, self.redis, m.id, self.org_id, 0)
        return m
