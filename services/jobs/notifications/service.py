"""The in-app notification center of the caller (a signed-in user, in the organization they
act in), and the fan-out that turns an event into users' notifications."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionFactory, after_commit, session_scope
from libs.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.notify import KINDS, Event
from services.jobs.notifications import inbox
from services.jobs.notifications.models import Notification
from services.jobs.notifications.repository import NotificationRepository
from services.jobs.notifications.schemas import NotificationOut
from services.jobs.webhooks.service import messages_for_event

log = logging.getLogger("aistack.jobs.notifications")


def notification_out(n: Notification) -> dict[str, Any]:
    return NotificationOut.model_validate(n).model_dump(mode="json")


class NotificationService:
    def __init__(self, session: AsyncSession, principal: Principal, redis: Redis) -> None:
        if principal.user_id is None:
            raise Forbidden("Notifications belong to a user", code="user_required")
        self.session = session
        self.redis = redis
        self.repo = NotificationRepository(session)
        self.user_id: uuid.UUID = principal.user_id
        self.org_id = principal.org_id

    async def page(
        self,
        *,
        limit: int,
        after: uuid.UUID | None,
        unread: bool | None,
        kinds: list[str],
        archived: bool,
    ) -> dict[str, Any]:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise BadRequest(
                f"Unknown kind {unknown[0]!r}: see GET /v1/notifications/kinds",
                code="unknown_kind",
            )
        after_seq = None
        if after is not None:
            after_seq = await self.repo.seq_of(self.user_id, self.org_id, after)
            if after_seq is None:
                raise NotFound("No such notification (after)", code="notification_not_found")
        rows, has_more = await self.repo.page(
            self.user_id,
            self.org_id,
            limit=limit,
            after_seq=after_seq,
            unread=unread,
            kinds=kinds,
            archived=archived,
        )
        return {
            "object": "list",
            "data": [notification_out(n) for n in rows],
            "first_id": rows[0].id if rows else None,
            "last_id": rows[-1].id if rows else None,
            "has_more": has_more,
        }

    async def get(self, nid: uuid.UUID) -> Notification:
        n = await self.repo.get(self.user_id, self.org_id, nid)
        if n is None:
            raise NotFound("No such notification", code="notification_not_found")
        return n

    async def unread(self) -> int:
        return await self.repo.unread_count(self.user_id, self.org_id)

    def _changed(self, org_id: uuid.UUID | None) -> None:
        user, redis = self.user_id, self.redis

        async def hook() -> None:
            try:
                await inbox.publish(redis, [(user, org_id, "changed", None)])
            except Exception as exc:  # live clients catch up at their next change
                log.warning("inbox change not published: %s", exc)

        after_commit(self.session, hook)

    async def mark_read(self, nid: uuid.UUID) -> Notification:
        n = await self.get(nid)
        if await self.repo.mark_read(self.user_id, self.org_id, _now(), nid):
            self._changed(n.org_id)
        await self.session.refresh(n)
        return n

    async def mark_all_read(self) -> dict[str, int]:
        marked = await self.repo.mark_read(self.user_id, self.org_id, _now(), None)
        if marked:
            self._changed(self.org_id)
        return {"marked": marked, "unread": await self.unread()}

    async def archive(self, nid: uuid.UUID) -> Notification:
        n = await self.get(nid)
        if n.archived_at is None:
            await self.repo.archive(self.user_id, self.org_id, _now(), nid)
            self._changed(n.org_id)
            await self.session.refresh(n)
        return n


def _now() -> datetime:
    return datetime.now(UTC)


class Recipients:
    """Who of an organization may receive an event, asked of auth (internal HTTP) every time:
    a user who left, or lost the role, is not among them."""

    def __init__(self, http: httpx.AsyncClient, auth_url: str, secret: str) -> None:
        self.http = http
        self.auth_url = auth_url.rstrip("/")
        self.secret = secret

    async def members(
        self, org_id: uuid.UUID, roles: list[str], user_ids: list[uuid.UUID]
    ) -> dict[str, Any]:
        token = sign_internal_token(Principal(), self.secret)
        params: list[tuple[str, str | int | float | bool | None]] = [("role", r) for r in roles]
        params += [("user_id", str(u)) for u in user_ids]
        try:
            resp = await self.http.get(
                f"{self.auth_url}/internal/orgs/{org_id}/recipients",
                params=params,
                headers={INTERNAL_HEADER: token},
                timeout=10,
            )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable("auth unreachable", code="auth_unavailable") from exc
        if resp.status_code != 200:
            raise ServiceUnavailable(
                f"auth answered {resp.status_code} for recipients", code="auth_unavailable"
            )
        body: dict[str, Any] = resp.json()
        return body


class Fanout:
    """Turns one event into its recipients' in-app notifications, once per event id."""

    def __init__(self, sessions: SessionFactory, redis: Redis, recipients: Recipients) -> None:
        self.sessions = sessions
        self.redis = redis
        self.recipients = recipients

    async def users_for(self, ev: Event) -> list[uuid.UUID]:
        spec = KINDS[ev.kind]
        if spec.account or ev.org_id is None:
            return [ev.user_id] if ev.user_id else []
        users: list[uuid.UUID] = []
        if ev.user_id is not None:
            found = await self.recipients.members(ev.org_id, [], [ev.user_id])
            users = [uuid.UUID(m["user_id"]) for m in found["members"]]
        if not users and spec.roles:
            # no user named, or they are gone: the kind's roles
            found = await self.recipients.members(ev.org_id, list(spec.roles), [])
            users = [uuid.UUID(m["user_id"]) for m in found["members"]]
        return [u for u in users if u != ev.actor_id]

    async def deliver(self, ev: Event) -> int:
        """Record the event and notify its recipients; how many were notified (0 for a
        duplicate). Raises when auth or the database fails (the job retries)."""
        spec = KINDS.get(ev.kind)
        if spec is None:
            log.warning("event %s of unknown kind %r dropped", ev.id, ev.kind)
            return 0
        users = await self.users_for(ev) if spec.inbox and "in_app" in spec.channels else []
        async with session_scope(self.sessions) as session:
            repo = NotificationRepository(session)
            if not await repo.record_event(ev):
                return 0
            created = await repo.add_for(ev, users)
            await messages_for_event(session, self.redis, ev)
            live = [(n.user_id, n.org_id, "notification", notification_out(n)) for n in created]
        try:
            await inbox.publish(self.redis, live)
        except Exception as exc:  # stored; live clients see them in the list
            log.warning("%d notifications not pushed live: %s", len(live), exc)
        return len(created)
