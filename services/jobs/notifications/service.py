"""The in-app notification center of the caller (a signed-in user, in the organization they
act in). The fan-out that fills it is :mod:`services.jobs.notifications.fanout`."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import after_commit
from libs.errors import BadRequest, Forbidden, NotFound
from libs.identity import Principal
from libs.notify import KINDS
from services.jobs.notifications import inbox
from services.jobs.notifications.models import Notification
from services.jobs.notifications.repository import NotificationRepository
from services.jobs.notifications.schemas import NotificationOut

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
