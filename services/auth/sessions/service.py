"""Sessions: one per sign-in on a device, holding a family of rotating refresh tokens."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from libs import notify
from libs.errors import AppError, BadRequest, Forbidden, NotFound, Unauthorized
from services.auth.core.context import AuthContext, utcnow
from services.auth.core.feature_service import FeatureService
from services.auth.core.security import (
    Cipher,
    hash_password_async,
    needs_rehash,
    new_opaque_token,
    sha256_hex,
    verify_password_async,
)
from services.auth.models import AuthSession, RefreshToken, User
from services.auth.sessions.login_limits import (
    Limits,
    check_login_limits,
    count_failure,
    login_limits,
)
from services.auth.sessions.repository import RefreshTokenRepository
from services.auth.sessions.schemas import LoginIn, TokenPair
from services.auth.tokens.keys import KeyCache
from services.auth.tokens.service import TokenService
from services.auth.totp.codes import second_factor


class SessionService(FeatureService):
    def __init__(self, ctx: AuthContext, keys: KeyCache) -> None:
        super().__init__(ctx)
        self.refresh_tokens = RefreshTokenRepository(ctx.session)
        self.token_service = TokenService(ctx, keys)
        self.cipher = Cipher(ctx.settings.key_encryption_secret)

    # ------------------------------------------------------------------------ sign-in

    async def login(self, body: LoginIn) -> TokenPair:
        limits = login_limits(self.settings, body.email, self.ctx.client.ip)
        await check_login_limits(self.redis, limits)
        user = await self.users.by_email(body.email)
        # an unknown email still costs one argon2 verification: timing reveals nothing
        ok = await verify_password_async(user.password_hash if user else None, body.password)
        if user is None or not ok:
            raise await self._login_failed(limits, user, body.email, "invalid_credentials")
        if user.totp_enabled_at is not None:
            if not body.totp_code and not body.recovery_code:
                raise Unauthorized(
                    "This account needs a TOTP code or a recovery code", code="totp_required"
                )
            if not second_factor(user, self.cipher, body.totp_code, body.recovery_code):
                raise await self._login_failed(limits, user, body.email, "invalid_totp")
        # a good sign-in clears the account's failures (not the address's)
        await self.redis.delete(limits[0][0])
        if user.password_hash and needs_rehash(user.password_hash):
            user.password_hash = await hash_password_async(body.password)
        org_id, role = await self.org_for(user, body.org_id)
        return await self.start_session(
            user, org_id, role, {"second_factor": user.totp_enabled_at is not None}
        )

    async def _login_failed(
        self, limits: Limits, user: User | None, email: str, reason: str
    ) -> AppError:
        await count_failure(self.redis, limits)
        await self.audit(
            "auth.login.failed",
            org_id=user.personal_org_id if user else None,
            actor_user_id=user.id if user else None,
            target_type="user",
            target_id=user.id if user else email,
            details={"reason": reason},
        )
        if reason == "invalid_totp":
            error: AppError = Unauthorized(
                "Invalid second-factor code", code="invalid_second_factor"
            )
        else:
            error = Unauthorized("Invalid email or password", code="invalid_credentials")
        return await self._fail_committed(error)

    async def start_session(
        self, user: User, org_id: uuid.UUID, role: str, details: dict[str, Any]
    ) -> TokenPair:
        """A new session (device) for a user who just proved who they are, with its tokens.
        A device (user agent) the account never signed in from is told to its owner."""
        new_device = await self.sessions.is_new_device(user.id, self.ctx.client.user_agent[:512])
        sess = AuthSession(
            user_id=user.id,
            org_id=org_id,
            user_agent=self.ctx.client.user_agent[:512],
            ip=self.ctx.client.ip,
        )
        await self.sessions.add(sess)
        pair = await self._issue(user, sess, role)
        await self.audit_session("auth.login.succeeded", sess, details)
        if new_device:
            await notify.emit(
                self.session,
                self.redis,
                "security.new_sign_in",
                notify.NewSignIn(
                    session_id=sess.id,
                    user_agent=sess.user_agent,
                    ip=sess.ip,
                    signed_in_at=utcnow(),
                ),
                source="auth",
                user_id=user.id,
                subject={"session_id": sess.id},
            )
        return pair

    async def org_for(self, user: User, wanted: uuid.UUID | None) -> tuple[uuid.UUID, str]:
        """The organization tokens carry: ``wanted`` if a member, else the personal one."""
        if wanted is not None:
            m = await self.orgs.membership(wanted, user.id)
            if m is not None:
                return m.org_id, m.role
        if user.personal_org_id:
            m = await self.orgs.membership(user.personal_org_id, user.id)
            if m is not None:
                return m.org_id, m.role
        rows = await self.orgs.for_user(user.id)
        if not rows:
            raise Forbidden("The account belongs to no organization", code="no_organization")
        return rows[0][0].id, rows[0][1].role

    async def _issue(self, user: User, sess: AuthSession, role: str) -> TokenPair:
        now = utcnow()
        raw = "rt_" + new_opaque_token()
        await self.refresh_tokens.add(
            RefreshToken(
                token_hash=sha256_hex(raw),
                family_id=sess.id,
                user_id=user.id,
                expires_at=now + timedelta(seconds=self.settings.refresh_token_ttl),
            )
        )
        access = await self.token_service.access_token(
            user_id=user.id, org_id=sess.org_id, role=role, session_id=sess.id
        )
        return TokenPair(
            access_token=access,
            refresh_token=raw,
            expires_in=self.settings.access_token_ttl,
            refresh_expires_in=self.settings.refresh_token_ttl,
            session_id=sess.id,
            org_id=sess.org_id,
        )

    # --------------------------------------------------------------- a session's life

    async def refresh(self, raw: str) -> TokenPair:
        await self._limit_public("refresh", self.settings.refreshes_per_ip_per_minute, window=60)
        now = utcnow()
        token = await self.refresh_tokens.by_hash(sha256_hex(raw))
        if token is None:
            raise Unauthorized("Invalid refresh token", code="invalid_refresh_token")
        sess = await self.sessions.get(token.family_id)
        assert sess is not None  # FK
        if token.rotated_at is not None:
            # a rotated token came back: it was stolen or the client is broken; end the family
            await self._end_sessions([sess], "refresh_token_reuse")
            await self.audit_session("auth.refresh_token.reused", sess, {"token_id": str(token.id)})
            raise await self._fail_committed(
                Unauthorized(
                    "This refresh token was already used; sign in again",
                    code="refresh_token_reused",
                )
            )
        if token.revoked_at is not None or sess.revoked_at is not None or token.expires_at <= now:
            raise Unauthorized("Invalid refresh token", code="invalid_refresh_token")
        user = await self.users.get(token.user_id)
        if user is None:
            raise Unauthorized("Invalid refresh token", code="invalid_refresh_token")
        token.rotated_at = now
        org_id, role = await self.org_for(user, sess.org_id)
        sess.org_id = org_id
        sess.last_seen_at = now
        if self.ctx.client.ip:
            sess.ip = self.ctx.client.ip
        return await self._issue(user, sess, role)

    async def switch_org(self, org_id: uuid.UUID) -> TokenPair:
        user, sess = await self.current_user()
        if sess is None:
            raise BadRequest("Switching organizations needs a session", code="no_session")
        m = await self._membership(org_id, user.id)
        sess.org_id = org_id
        sess.last_seen_at = utcnow()
        # the family's outstanding refresh token would carry the old org: retire it quietly
        await self.refresh_tokens.revoke_unused(sess.id, utcnow())
        return await self._issue(user, sess, m.role)

    async def logout(self) -> None:
        _, sess = await self.current_user()
        if sess is None:
            return
        await self._end_sessions([sess], "logout")
        await self.audit_session("auth.logout", sess)

    async def logout_all(self) -> int:
        user, sess = await self.current_user()
        live = await self.sessions.active_for_user(user.id)
        await self._end_sessions(live, "logout_all")
        await self.audit_user(
            "auth.logout_all", user, self._acting_org(user, sess), {"sessions": len(live)}
        )
        return len(live)

    # -------------------------------------------------------------------- the devices

    async def list_sessions(self) -> list[dict[str, Any]]:
        user, sess = await self.current_user()
        rows = await self.sessions.active_for_user(user.id)
        return [
            {
                "id": s.id,
                "org_id": s.org_id,
                "user_agent": s.user_agent,
                "ip": s.ip,
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "current": sess is not None and s.id == sess.id,
            }
            for s in rows
        ]

    async def end_session(self, session_id: uuid.UUID) -> None:
        user, _ = await self.current_user()
        target = await self.sessions.get(session_id)
        if target is None or target.user_id != user.id or target.revoked_at is not None:
            raise NotFound("Session not found", code="session_not_found")
        await self._end_sessions([target], "ended_by_user")
        await self.audit_session("auth.session.ended", target)
