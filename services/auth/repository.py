"""Data access of the auth service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from libs.db import Repository
from services.auth.models import (
    ApiKey,
    AuditEvent,
    AuthSession,
    FeatureFlag,
    Invite,
    Membership,
    OneTimeToken,
    Organization,
    RefreshToken,
    User,
)


class UserRepository(Repository[User]):
    model = User

    async def by_email(self, email: str) -> User | None:
        stmt = select(User).where(User.email == email.lower())
        return (await self.session.scalars(stmt)).one_or_none()


class OrgRepository(Repository[Organization]):
    model = Organization

    async def membership(self, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
        stmt = select(Membership).where(Membership.org_id == org_id, Membership.user_id == user_id)
        return (await self.session.scalars(stmt)).one_or_none()

    async def for_user(self, user_id: uuid.UUID) -> list[tuple[Organization, Membership]]:
        stmt = (
            select(Organization, Membership)
            .join(Membership, Membership.org_id == Organization.id)
            .where(Membership.user_id == user_id)
            .order_by(Organization.personal.desc(), Organization.created_at, Organization.id)
        )
        return [(o, m) for o, m in (await self.session.execute(stmt)).all()]

    async def members(
        self, org_id: uuid.UUID, limit: int, offset: int
    ) -> list[tuple[Membership, User]]:
        stmt = (
            select(Membership, User)
            .join(User, User.id == Membership.user_id)
            .where(Membership.org_id == org_id)
            .order_by(Membership.created_at, Membership.id)
            .limit(limit)
            .offset(offset)
        )
        return [(m, u) for m, u in (await self.session.execute(stmt)).all()]

    async def count_owners(self, org_id: uuid.UUID) -> int:
        stmt = select(Membership.id).where(Membership.org_id == org_id, Membership.role == "owner")
        return len((await self.session.scalars(stmt)).all())


class SessionRepository(Repository[AuthSession]):
    model = AuthSession

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


class InviteRepository(Repository[Invite]):
    model = Invite

    async def by_hash(self, token_hash: str) -> Invite | None:
        stmt = select(Invite).where(Invite.token_hash == token_hash).with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()


class ApiKeyRepository(Repository[ApiKey]):
    model = ApiKey

    async def get_for_org(self, org_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id)
        return (await self.session.scalars(stmt)).one_or_none()

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.key_hash == key_hash)
        return (await self.session.scalars(stmt)).one_or_none()

    async def live_of_member(self, org_id: uuid.UUID, user_id: uuid.UUID) -> list[ApiKey]:
        """Keys a member created in an organization and that are not revoked (locked)."""
        stmt = (
            select(ApiKey)
            .where(ApiKey.org_id == org_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at, ApiKey.id)
            .with_for_update()
        )
        return list((await self.session.scalars(stmt)).all())

    async def page(
        self, org_id: uuid.UUID, limit: int, offset: int, include_revoked: bool
    ) -> list[ApiKey]:
        where: list[Any] = [ApiKey.org_id == org_id]
        if not include_revoked:
            where.append(ApiKey.revoked_at.is_(None))
        return await self.list(
            *where, order_by=(ApiKey.created_at.desc(), ApiKey.id), limit=limit, offset=offset
        )


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


class FlagRepository(Repository[FeatureFlag]):
    model = FeatureFlag

    async def by_key(self, key: str) -> FeatureFlag | None:
        stmt = select(FeatureFlag).where(FeatureFlag.key == key)
        return (await self.session.scalars(stmt)).one_or_none()

    async def everything(self) -> list[FeatureFlag]:
        return await self.list(order_by=(FeatureFlag.key,), limit=10_000)
