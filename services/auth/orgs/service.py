"""Organizations: members and roles (nobody grants above their own), invitations by email."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from libs import notify
from libs.entitlements import EntitlementsCache, EntitlementsUnavailable
from libs.errors import BadRequest, Conflict, Forbidden, NotFound
from libs.permissions import ROLE_RANK, Role
from services.auth.api_keys.service import ApiKeyService
from services.auth.core import mail
from services.auth.core.context import AuthContext, utcnow
from services.auth.core.feature_service import FeatureService
from services.auth.core.security import new_opaque_token, sha256_hex
from services.auth.models import Invite, Membership, Organization
from services.auth.orgs.repository import InviteRepository
from services.auth.orgs.schemas import InviteCreate

log = logging.getLogger("aistack.auth")


def org_out(org: Organization, m: Membership) -> dict[str, Any]:
    """An organization as its member ``m`` sees it (OrgOut)."""
    return {
        "id": org.id,
        "name": org.name,
        "personal": org.personal,
        "role": m.role,
        "created_at": org.created_at,
    }


class OrgService(FeatureService):
    def __init__(self, ctx: AuthContext) -> None:
        super().__init__(ctx)
        self.invites = InviteRepository(ctx.session)
        self.api_key_service = ApiKeyService(ctx)

    async def create_org(self, name: str) -> dict[str, Any]:
        user, _ = await self.current_user()
        org = Organization(name=name, personal=False, created_by=user.id)
        await self.orgs.add(org)
        m = Membership(org_id=org.id, user_id=user.id, role=Role.OWNER.value)
        self.session.add(m)
        await self.session.flush()
        await self.session.refresh(org)
        await self.audit("org.created", org_id=org.id, target_type="org", target_id=org.id)
        return org_out(org, m)

    async def list_orgs(self) -> list[dict[str, Any]]:
        user, _ = await self.current_user()
        return [org_out(o, m) for o, m in await self.orgs.for_user(user.id)]

    async def get_org(self, org_id: uuid.UUID) -> dict[str, Any]:
        user, _ = await self.current_user()
        m = await self._membership(org_id, user.id)
        org = await self.orgs.get(org_id)
        assert org is not None
        return org_out(org, m)

    # ---------------------------------------------------------------------- members

    async def list_members(self, org_id: uuid.UUID, limit: int, offset: int) -> dict[str, Any]:
        user, _ = await self.current_user()
        await self._membership(org_id, user.id)
        rows = await self.orgs.members(org_id, limit + 1, offset)
        return {
            "data": [
                {
                    "user_id": u.id,
                    "email": u.email,
                    "display_name": u.display_name,
                    "role": m.role,
                    "joined_at": m.created_at,
                }
                for m, u in rows[:limit]
            ],
            "has_more": len(rows) > limit,
        }

    async def _ensure_owner_left(self, org_id: uuid.UUID, target: Membership) -> None:
        if target.role == Role.OWNER.value and await self.orgs.count_owners(org_id) <= 1:
            raise Conflict("An organization keeps at least one owner", code="last_owner")

    async def change_role(
        self, org_id: uuid.UUID, user_id: uuid.UUID, role: Role
    ) -> dict[str, Any]:
        user, _ = await self.current_user()
        me = await self._org_admin(org_id, user.id)
        target = await self.orgs.membership(org_id, user_id)
        if target is None:
            raise NotFound("Member not found", code="member_not_found")
        my_rank = ROLE_RANK[Role(me.role)]
        if ROLE_RANK[Role(target.role)] > my_rank or ROLE_RANK[role] > my_rank:
            raise Forbidden(
                "You cannot grant or change a role above your own", code="role_too_high"
            )
        before = target.role
        if before != role.value:
            if before == Role.OWNER.value:
                await self._ensure_owner_left(org_id, target)
            target.role = role.value
            await self.session.flush()
            details: dict[str, Any] = {"from": before, "to": role.value}
            if ROLE_RANK[role] < ROLE_RANK[Role(before)]:
                # less rights now, not at the next refresh; more rights can wait for it
                ended = await self._end_sessions_in_org(user_id, org_id, "role_changed")
                details["sessions_ended"] = ended
            await self.audit(
                "org.member.role_changed",
                org_id=org_id,
                target_type="user",
                target_id=user_id,
                details=details,
            )
        target_user = await self.users.get(user_id)
        assert target_user is not None
        return {
            "user_id": user_id,
            "email": target_user.email,
            "display_name": target_user.display_name,
            "role": target.role,
            "joined_at": target.created_at,
        }

    async def remove_member(self, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
        user, _ = await self.current_user()
        me = await self._membership(org_id, user.id)
        target = await self.orgs.membership(org_id, user_id)
        if user_id != user.id:
            if ROLE_RANK[Role(me.role)] < ROLE_RANK[Role.ADMIN]:
                raise Forbidden("Only owners and admins can do this", code="org_admin_required")
            if target is None:
                raise NotFound("Member not found", code="member_not_found")
            if ROLE_RANK[Role(target.role)] > ROLE_RANK[Role(me.role)]:
                raise Forbidden("You cannot remove a member above your role", code="role_too_high")
        assert target is not None or user_id != user.id
        target = target or me
        await self._ensure_owner_left(org_id, target)
        await self.session.delete(target)
        await self.session.flush()
        ended = await self._end_sessions_in_org(user_id, org_id, "member_removed")
        await self.audit(
            "org.member.removed",
            org_id=org_id,
            target_type="user",
            target_id=user_id,
            details={"sessions_ended": ended},
        )
        await self.api_key_service.revoke_member_keys(org_id, user_id, reason="member_removed")
        removed = await self.users.get(user_id)
        await notify.emit(
            self.session,
            self.redis,
            "org.member.removed",
            notify.MemberRemoved(
                user_id=user_id, email=removed.email if removed else None, removed_by=user.id
            ),
            source="auth",
            org_id=org_id,
            actor_id=user.id,
            subject={"user_id": user_id},
        )

    # ---------------------------------------------------------------------- invites

    async def invite(self, org_id: uuid.UUID, body: InviteCreate) -> Invite:
        user, _ = await self.current_user()
        me = await self._org_admin(org_id, user.id)
        if ROLE_RANK[body.role] > ROLE_RANK[Role(me.role)]:
            raise Forbidden("You cannot invite above your own role", code="role_too_high")
        existing = await self.users.by_email(body.email)
        if existing and await self.orgs.membership(org_id, existing.id):
            raise Conflict("That person is already a member", code="already_member")
        await self._check_seats(org_id, lock=False)
        org = await self.orgs.get(org_id)
        assert org is not None
        raw = new_opaque_token()
        inv = Invite(
            org_id=org_id,
            email=body.email,
            role=body.role.value,
            token_hash=sha256_hex(raw),
            invited_by=user.id,
            expires_at=utcnow() + timedelta(seconds=self.settings.invite_ttl),
        )
        await self.invites.add(inv)
        await self.session.refresh(inv)
        await self._queue_mail(
            body.email,
            mail.invite(self.settings, org.name, body.role.value, raw),
            f"auth-mail-{inv.id}",
        )
        await self.audit(
            "org.member.invited",
            org_id=org_id,
            target_type="invite",
            target_id=inv.id,
            details={"email": body.email, "role": body.role.value},
        )
        await notify.emit(
            self.session,
            self.redis,
            "org.member.invited",
            notify.MemberInvited(
                invite_id=inv.id, email=body.email, role=body.role.value, invited_by=user.id
            ),
            source="auth",
            org_id=org_id,
            actor_id=user.id,
            subject={"invite_id": inv.id},
        )
        return inv

    async def _check_seats(self, org_id: uuid.UUID, *, lock: bool) -> None:
        """Refuse one more member past the plan's seats (published by billing). Members
        joining at once are counted under the organization's row lock (``lock``); Redis
        unreachable: not checked (a seat is no spend; nobody is locked out by an outage)."""
        try:
            ent = await EntitlementsCache(self.redis, ttl_s=0).get(org_id)
        except EntitlementsUnavailable as exc:
            log.warning("seats of %s not checked (Redis: %s)", org_id, exc)
            return
        if ent is None or ent.limits.seats is None:
            return
        seats = ent.limits.seats
        members = await self.orgs.count_members(org_id, lock=lock)
        if members >= seats:
            raise Forbidden(
                f"Your organization has reached its limit (seats) of {seats} members "
                f"({members} now) on the {ent.plan} plan; remove a member or change plans "
                "(GET /v1/billing/plans)",
                code="quota_exceeded",
                details={"limit": "seats", "max": seats, "current": members, "plan": ent.plan},
            )

    async def list_invites(self, org_id: uuid.UUID) -> list[Invite]:
        user, _ = await self.current_user()
        await self._org_admin(org_id, user.id)
        return await self.invites.list(
            Invite.org_id == org_id,
            Invite.accepted_at.is_(None),
            Invite.revoked_at.is_(None),
            Invite.expires_at > utcnow(),
            order_by=(Invite.created_at.desc(),),
            limit=500,
        )

    async def revoke_invite(self, org_id: uuid.UUID, invite_id: uuid.UUID) -> None:
        user, _ = await self.current_user()
        await self._org_admin(org_id, user.id)
        inv = await self.invites.get(invite_id)
        if inv is None or inv.org_id != org_id:
            raise NotFound("Invite not found", code="invite_not_found")
        if inv.revoked_at is None and inv.accepted_at is None:
            inv.revoked_at = utcnow()
            await self.audit(
                "org.invite.revoked", org_id=org_id, target_type="invite", target_id=inv.id
            )

    async def accept_invite(self, raw: str) -> dict[str, Any]:
        user, _ = await self.current_user()
        inv = await self.invites.by_hash(sha256_hex(raw))
        now = utcnow()
        if (
            inv is None
            or inv.accepted_at is not None
            or inv.revoked_at is not None
            or inv.expires_at <= now
        ):
            raise BadRequest("The invite is invalid, used or expired", code="invalid_token")
        if inv.email != user.email:
            raise Forbidden(
                "This invite was sent to another email address", code="invite_email_mismatch"
            )
        inv.accepted_at = now
        inv.accepted_by = user.id
        m = await self.orgs.membership(inv.org_id, user.id)
        if m is None:
            await self._check_seats(inv.org_id, lock=True)
            m = Membership(org_id=inv.org_id, user_id=user.id, role=inv.role)
            self.session.add(m)
            await self.session.flush()
            await self.session.refresh(m)
        # the invite mail reached the address
        user.email_verified_at = user.email_verified_at or now
        await self.audit(
            "org.invite.accepted",
            org_id=inv.org_id,
            target_type="invite",
            target_id=inv.id,
            details={"role": m.role},
        )
        org = await self.orgs.get(inv.org_id)
        assert org is not None
        return org_out(org, m)

    # ---------------------------------------------------------------- notifications

    async def recipients(
        self, org_id: uuid.UUID, roles: list[str], user_ids: list[uuid.UUID]
    ) -> dict[str, Any]:
        """Who of ``org_id`` may receive a notification (services only: the jobs service asks
        before every fan-out, so someone who left gets nothing)."""
        if self.principal.kind != "service":
            raise Forbidden("Services only", code="service_required")
        org = await self.orgs.get(org_id)
        if org is None:
            return {"org": None, "members": []}
        members = await self.orgs.recipients(org_id, roles, user_ids)
        return {
            "org": {"id": org.id, "name": org.name},
            "members": [
                {
                    "user_id": u.id,
                    "role": m.role,
                    "email": u.email,
                    "display_name": u.display_name,
                }
                for m, u in members
            ],
        }

    async def contact(self, user_id: uuid.UUID) -> dict[str, Any]:
        """A user's email and name (services only: account notices' mails)."""
        if self.principal.kind != "service":
            raise Forbidden("Services only", code="service_required")
        user = await self.users.get(user_id)
        if user is None:
            raise NotFound("No such user", code="user_not_found")
        return {"user_id": user.id, "email": user.email, "display_name": user.display_name}
