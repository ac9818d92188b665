"""Where organizations are stored: organizations, memberships, invites."""

from __future__ import annotations

import uuid

from sqlalchemy import func, or_, select

from libs.orm import Repository
from libs.permissions import Role
from services.auth.models import Invite, Membership, Organization, User


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

    async def recipients(
        self, org_id: uuid.UUID, roles: list[str], user_ids: list[uuid.UUID]
    ) -> list[tuple[Membership, User]]:
        """Members of ``org_id`` with one of ``roles`` or among ``user_ids`` (notifications)."""
        who = []
        if roles:
            who.append(Membership.role.in_(roles))
        if user_ids:
            who.append(Membership.user_id.in_(user_ids))
        if not who:
            return []
        stmt = (
            select(Membership, User)
            .join(User, User.id == Membership.user_id)
            .where(Membership.org_id == org_id, or_(*who))
            .order_by(Membership.created_at, Membership.id)
        )
        return [(m, u) for m, u in (await self.session.execute(stmt)).all()]

    async def count_members(self, org_id: uuid.UUID, *, lock: bool = False) -> int:
        """Members of an organization; with ``lock``, its row is locked first, so members
        joining at once are counted one after the other (a seat limit holds)."""
        if lock:
            await self.session.execute(
                select(Organization.id).where(Organization.id == org_id).with_for_update()
            )
        stmt = select(func.count()).select_from(Membership).where(Membership.org_id == org_id)
        return int((await self.session.execute(stmt)).scalar_one())

    async def count_owners(self, org_id: uuid.UUID) -> int:
        stmt = select(Membership.id).where(
            Membership.org_id == org_id, Membership.role == Role.OWNER.value
        )
        return len((await self.session.scalars(stmt)).all())

    async def add_personal(self, user: User, owner_name: str) -> Organization:
        """A new account's own workspace (``user`` owns it; tokens carry it by default)."""
        org = Organization(
            name=f"{owner_name}'s workspace"[:200], personal=True, created_by=user.id
        )
        self.session.add(org)
        await self.session.flush()
        self.session.add(Membership(org_id=org.id, user_id=user.id, role=Role.OWNER.value))
        user.personal_org_id = org.id
        await self.session.flush()
        return org


class InviteRepository(Repository[Invite]):
    model = Invite

    async def by_hash(self, token_hash: str) -> Invite | None:
        stmt = select(Invite).where(Invite.token_hash == token_hash).with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()
