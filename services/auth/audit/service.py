"""Reading the audit log (every feature writes it through FeatureService.audit)."""

from __future__ import annotations

import uuid

from services.auth.audit.repository import AuditFilter
from services.auth.core.feature_service import FeatureService
from services.auth.models import AuditEvent


class AuditService(FeatureService):
    async def list_audit(
        self, org_id: uuid.UUID, filters: AuditFilter, *, limit: int, offset: int
    ) -> tuple[list[AuditEvent], bool]:
        user, _ = await self.current_user()
        await self._org_admin(org_id, user.id)
        rows = await self.audits.page(org_id, filters, limit=limit + 1, offset=offset)
        return rows[:limit], len(rows) > limit
