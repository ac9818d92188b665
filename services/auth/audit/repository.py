"""Where the audit log is stored."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from libs.db import Repository
from services.auth.models import AuditEvent


class AuditRepository(Repository[AuditEvent]):
    model = AuditEvent

    async def page(
        self,
        org_id: uuid.UUID,
        *,
        action: str | None,
        actor: uuid.UUID | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        offset: int,
    ) -> list[AuditEvent]:
        where: list[Any] = [AuditEvent.org_id == org_id]
        if action:
            # "auth.login" matches "auth.login.failed" and "auth.login.succeeded"
            where.append(
                (AuditEvent.action == action)
                | AuditEvent.action.startswith(action + ".", autoescape=True)
            )
        if actor:
            where.append(AuditEvent.actor_user_id == actor)
        if since:
            where.append(AuditEvent.created_at >= since)
        if until:
            where.append(AuditEvent.created_at < until)
        return await self.list(
            *where,
            order_by=(AuditEvent.created_at.desc(), AuditEvent.id.desc()),
            limit=limit,
            offset=offset,
        )
