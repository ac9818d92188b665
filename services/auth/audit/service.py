"""Reading the audit log (every feature writes it through FeatureService.audit)."""

from __future__ import annotations

import uuid
from datetime import datetime

from services.auth.core.feature_service import FeatureService
from services.auth.models import AuditEvent


class AuditService(FeatureService):
    async def list_audit(
        self,
        org_id: uuid.UUID,
        *,
        action: str | None,
        actor: uuid.UUID | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        offset: int,
    ) -> tuple[list[AuditEvent], bool]:
        user, _ = await self.current_user()
        await self._org_admin(org_id, user.id)
        rows = await self.audits.page(
            org_id,
            action=action,
            actor=actor,
            since=since,
            until=until,
            limit=limit + 1,
            offset=offset,
        )
        return rows[:limit], len(rows) > limit
