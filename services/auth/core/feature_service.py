"""The base of every feature's service: one unit of work per request, and what the features
share: the caller and their memberships, the audit trail, limits on public routes, mail,
and ending sessions (which every gateway then learns of)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from libs.context import get_request_id
from libs.db import after_commit, commit, rollback
from libs.errors import AppError, Forbidden, NotFound, RateLimited, Unauthorized
from libs.identity import Principal
from libs.permissions import ROLE_RANK, Role
from libs.ratelimit import hit
from services.auth.accounts.repository import UserRepository
from services.auth.audit.repository import AuditRepository
from services.auth.core import mail
from services.auth.core.context import AuthContext, utcnow
from services.auth.core.security import sha256_hex
from services.auth.models import AuditEvent, AuthSession, Membership, User
from services.auth.orgs.repository import OrgRepository
from services.auth.sessions import revocations
from services.auth.sessions.repository import SessionRepository

log = logging.getLogger("aistack.auth")

_MAIL_COUNT = "aistack:auth:mail:"


class FeatureService:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        self.session = ctx.session
        self.redis = ctx.redis
        self.settings = ctx.settings
        self.users = UserRepository(ctx.session)
        self.orgs = OrgRepository(ctx.session)
        self.sessions = SessionRepository(ctx.session)
        self.audits = AuditRepository(ctx.session)

    # ----------------------------------------------------------------------- the caller

    @property
    def principal(self) -> Principal:
        if self.ctx.principal is None:
            raise Unauthorized("Authentication required")
        return self.ctx.principal

    async def current_user(self) -> tuple[User, AuthSession | None]:
        """The signed-in user (not an API key) and their live session."""
        p = self.principal
        if p.user_id is None or p.key_id is not None:
            raise Forbidden("This route needs a signed-in user", code="user_required")
        user = await self.users.get(p.user_id)
        if user is None:
            raise Unauthorized("Unknown user", code="invalid_principal")
        sess = None
        if p.session_id is not None:
            sess = await self.sessions.get(p.session_id)
            if sess is None or sess.user_id != user.id or sess.revoked_at is not None:
                raise Unauthorized("This session has ended; sign in again", code="session_revoked")
        return user, sess

    @staticmethod
    def _acting_org(user: User, sess: AuthSession | None) -> uuid.UUID | None:
        """The organization a signed-in user acts in: their session's, else their own."""
        return sess.org_id if sess else user.personal_org_id

    async def _membership(self, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership:
        m = await self.orgs.membership(org_id, user_id)
        if m is None:
            raise NotFound("Organization not found", code="org_not_found")
        return m

    async def _org_admin(self, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership:
        m = await self._membership(org_id, user_id)
        if ROLE_RANK[Role(m.role)] < ROLE_RANK[Role.ADMIN]:
            raise Forbidden("Only owners and admins can do this", code="org_admin_required")
        return m

    async def require_platform_admin(self) -> None:
        p = self.principal
        if p.kind == "service":
            return
        if p.user_id is not None and p.key_id is None:
            user = await self.users.get(p.user_id)
            if user is not None and user.is_platform_admin:
                return
        raise Forbidden("Platform administrators only", code="platform_admin_required")

    # ------------------------------------------------------------------ audit, failures

    async def audit(
        self,
        action: str,
        *,
        org_id: uuid.UUID | None = None,
        actor_user_id: uuid.UUID | None = None,
        target_type: str | None = None,
        target_id: Any = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        p = self.ctx.principal
        await self.audits.add(
            AuditEvent(
                org_id=org_id,
                actor_user_id=actor_user_id or (p.user_id if p else None),
                actor_key_id=p.key_id if p else None,
                action=action,
                target_type=target_type,
                target_id=str(target_id) if target_id is not None else None,
                ip=self.ctx.client.ip,
                user_agent=self.ctx.client.user_agent[:512] or None,
                request_id=get_request_id(),
                details=details or {},
            )
        )

    async def audit_user(
        self,
        action: str,
        user: User,
        org_id: uuid.UUID | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """An event of an account, done by its own user."""
        await self.audit(
            action,
            org_id=org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
            details=details,
        )

    async def audit_session(
        self, action: str, sess: AuthSession, details: dict[str, Any] | None = None
    ) -> None:
        """An event of a session, done by its user."""
        await self.audit(
            action,
            org_id=sess.org_id,
            actor_user_id=sess.user_id,
            target_type="session",
            target_id=sess.id,
            details=details,
        )

    async def _fail_committed(self, error: AppError) -> AppError:
        """Commit what was recorded (audit, revocations) although the request fails."""
        await commit(self.session)
        return error

    # ------------------------------------------------------------- public routes, mail

    async def _limit_public(
        self, action: str, limit: int | None = None, window: float = 3600
    ) -> None:
        """Per-address cap on public routes that cost a password hash, an email or a lookup
        (``limit`` per ``window`` seconds; by default the hourly public-requests cap)."""
        if not self.ctx.client.ip:
            return
        decision = await hit(
            self.redis,
            f"aistack:auth:{action}:ip:{self.ctx.client.ip}",
            self.settings.public_requests_per_ip_per_hour if limit is None else limit,
            window,
        )
        if not decision.allowed:
            raise RateLimited(
                "Too many requests from this address; try again later",
                headers=decision.headers(),
            )

    async def _mail_allowed(self, email: str | None) -> bool:
        if not email:
            return False
        key = _MAIL_COUNT + sha256_hex(email)
        pipe = self.redis.pipeline(transaction=True)
        # SET NX then INCR: one window per address (EXPIRE NX needs Redis 7)
        pipe.set(key, 0, ex=3600, nx=True)
        pipe.incr(key)
        _, count = await pipe.execute()
        return int(count) <= self.settings.mails_per_address_per_hour

    async def _queue_mail(self, to: str | None, message: tuple[str, str], job_id: str) -> None:
        if not to:
            return  # accounts from WeChat/WeCom may have no address
        await mail.queue_email(
            self.session, self.redis, self.settings, to=to, message=message, job_id=job_id
        )

    # ------------------------------------------------------------------ ending sessions

    async def _revoked_sessions_published(self, session_ids: list[uuid.UUID]) -> None:
        """Tell gateways these sessions ended (their access tokens die early): recorded in
        this transaction, announced after the commit, replayed if Redis misses it
        (services/auth/sessions/revocations.py)."""
        if not session_ids:
            return
        ttl = revocations.marker_ttl(self.settings.access_token_ttl)
        await revocations.record(self.session, session_ids, utcnow(), ttl)
        redis, session = self.redis, self.session

        async def hook() -> None:
            try:
                await revocations.announce(redis, [(sid, ttl) for sid in session_ids])
            except Exception as exc:
                log.warning(
                    "%d revoked sessions not announced yet (%s); kept in "
                    "auth.pending_revocations and announced when Redis is back",
                    len(session_ids),
                    exc,
                )
                return
            try:
                await revocations.announced(session, session_ids)
            except Exception:
                # announced already; the replay sends it once more and drops the rows
                log.warning("could not clear %d pending revocations", len(session_ids))
                await rollback(session)

        after_commit(self.session, hook)

    async def _end_sessions(self, sessions: list[AuthSession], reason: str) -> None:
        live = [s for s in sessions if s.revoked_at is None]
        await self.sessions.revoke(live, utcnow(), reason)
        await self._revoked_sessions_published([s.id for s in live])

    async def _end_sessions_in_org(self, user_id: uuid.UUID, org_id: uuid.UUID, reason: str) -> int:
        """End the sessions whose tokens carry a membership that just shrank or ended.

        Other services trust the roles in the access token; ending the session (and so
        its refresh tokens) is what makes every gateway refuse those tokens at once. The
        session-revoked marker alone would not do: gateways remember a revoked session id
        for good, so a refreshed token of the same session would be refused too.
        """
        live = await self.sessions.active_in_org(user_id, org_id)
        await self._end_sessions(live, reason)
        return len(live)
