"""Where sessions are stored: sessions (one per device) and their refresh tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update

from libs.orm import Repository
from services.auth.models import AuthSession, RefreshToken


class SessionRepository(Repository[AuthSession]):
    model = AuthSession

    async def is_new_device(self, user_id: uuid.UUID, user_agent: str) -> bool:
        """Whether the account signed in before, never from ``user_agent`` (its first sign-in
        is no news)."""
        known = select(AuthSession.user_agent).where(AuthSession.user_id == user_id).distinct()
        agents = set((await self.session.scalars(known.limit(1000))).all())
        return bool(agents) and user_agent not in agents

    async def active_for_user(self, user_id: uuid.UUID) -> list[AuthSession]:
        return await self.list(
            AuthSession.user_id == user_id,
            AuthSession.revoked_at.is_(None),
            order_by=(AuthSession.last_seen_at.desc(), AuthSession.id),
            limit=500,
        )

    async def active_in_org(self, user_id: uuid.UUID, org_id: uuid.UUID) -> list[AuthSession]:
        """Live sessions of a user whose tokens carry ``org_id``."""
        return await self.list(
            AuthSession.user_id == user_id,
            AuthSession.org_id == org_id,
            AuthSession.revoked_at.is_(None),
            order_by=(AuthSession.last_seen_at.desc(), AuthSession.id),
            limit=500,
        )

    async def revoke(self, sessions: list[AuthSession], now: datetime, reason: str) -> None:
        ids = [s.id for s in sessions if s.revoked_at is None]
        for s in sessions:
            if s.revoked_at is None:
                s.revoked_at = now
                s.revoked_reason = reason
        if ids:
            await self.session.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id.in_(ids), RefreshToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        await self.session.flush()


class RefreshTokenRepository(Repository[RefreshToken]):
    model = RefreshToken

    async def by_hash(self, token_hash: str) -> RefreshToken | None:
        stmt = select(RefreshToken).where(RefreshToken.token_hash == token_hash).with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def revoke_unused(self, family_id: uuid.UUID, now: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(
                RefreshToken.family_id == family_id,
                RefreshToken.revoked_at.is_(None),
                RefreshToken.rotated_at.is_(None),
            )
            .values(revoked_at=now)
        )
