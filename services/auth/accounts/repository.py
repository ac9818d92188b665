"""Where accounts are stored: users and their one-time email tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update

from libs.orm import Repository
from services.auth.models import OneTimeToken, User


class UserRepository(Repository[User]):
    model = User

    async def by_email(self, email: str) -> User | None:
        stmt = select(User).where(User.email == email.lower())
        return (await self.session.scalars(stmt)).one_or_none()


class OneTimeTokenRepository(Repository[OneTimeToken]):
    model = OneTimeToken

    async def by_hash(self, token_hash: str, purpose: str) -> OneTimeToken | None:
        stmt = (
            select(OneTimeToken)
            .where(OneTimeToken.token_hash == token_hash, OneTimeToken.purpose == purpose)
            .with_for_update()
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def use_all(self, user_id: uuid.UUID, purpose: str, now: datetime) -> None:
        """Spend every outstanding token of one purpose (a new one, or the job got done)."""
        await self.session.execute(
            update(OneTimeToken)
            .where(
                OneTimeToken.user_id == user_id,
                OneTimeToken.purpose == purpose,
                OneTimeToken.used_at.is_(None),
            )
            .values(used_at=now)
        )
