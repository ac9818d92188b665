"""Where the audit log is stored."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.orm import Repository
from services.auth.models import AuditEvent


@dataclass(frozen=True)
class AuditFilter:
    """Which events of an organization: by action (and its sub-actions), actor, time."""

    action: str | None = None
    actor: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


class AuditRepository(Repository[AuditEvent]):
    model = AuditEvent

    async def page(
        self, org_id: uuid.UUID, filters: AuditFilter, *, limit: int, offset: int
    ) -> list[AuditEvent]:
        where: list[Any] = [AuditEvent.org_id == org_id]
        if filters.action:
            # "auth.login" matches "auth.login.failed" and "auth.login.succeeded"
            where.append(
                (AuditEvent.action == filters.action)
                | AuditEvent.action.startswith(filters.action + ".", autoescape=True)
            )
        if filters.actor:
            where.append(AuditEvent.actor_user_id == filters.actor)
        if filters.since:
            where.append(AuditEvent.created_at >= filters.since)
        if filters.until:
            where.append(AuditEvent.created_at < filters.until)
        return await self.list(
            *where,
            order_by=(AuditEvent.created_at.desc(), AuditEvent.id.desc()),
            limit=limit,
            offset=offset,
        )
