"""Where external identities are stored (one per provider account linked to a user)."""

from __future__ import annotations

from sqlalchemy import select

from libs.orm import Repository
from services.auth.models import Identity


class IdentityRepository(Repository[Identity]):
    model = Identity

    async def by_subject(self, provider: str, subject: str) -> Identity | None:
        stmt = select(Identity).where(Identity.provider == provider, Identity.subject == subject)
        return (await self.session.scalars(stmt)).one_or_none()
