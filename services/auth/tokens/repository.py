"""Where signing keys are stored (private halves encrypted)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text, update

from libs.orm import Repository
from services.auth.models import SigningKey
from services.auth.tokens.keys import ACTIVE, RETIRED, RETIRING

_LOCK_ID = 0x617574686B6579  # pg advisory lock: one signing key created at a time


class SigningKeyRepository(Repository[SigningKey]):
    model = SigningKey

    async def lock(self) -> None:
        """Until the transaction ends, no other process creates or rotates keys."""
        await self.session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})

    async def active(self) -> SigningKey | None:
        stmt = (
            select(SigningKey)
            .where(SigningKey.status == ACTIVE)
            .order_by(SigningKey.created_at.desc())
            .limit(1)
        )
        return (await self.session.scalars(stmt)).first()

    async def all_active(self) -> list[SigningKey]:
        stmt = select(SigningKey).where(SigningKey.status == ACTIVE)
        return list((await self.session.scalars(stmt)).all())

    async def retire_expired(self, now: datetime) -> None:
        await self.session.execute(
            update(SigningKey)
            .where(SigningKey.status == RETIRING, SigningKey.retire_after <= now)
            .values(status=RETIRED)
        )

    async def verifying(self, now: datetime) -> list[SigningKey]:
        """Keys whose tokens may still be valid: the active one and retiring ones."""
        stmt = (
            select(SigningKey)
            .where(
                (SigningKey.status == ACTIVE)
                | ((SigningKey.status == RETIRING) & (SigningKey.retire_after > now))
            )
            .order_by(SigningKey.created_at.desc())
        )
        return list((await self.session.scalars(stmt)).all())

    async def latest(self) -> list[SigningKey]:
        stmt = select(SigningKey).order_by(SigningKey.created_at.desc()).limit(100)
        return list((await self.session.scalars(stmt)).all())
