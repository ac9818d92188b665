"""Accounts: sign-up (with a personal workspace), email verification, passwords, the profile.

Public answers never reveal whether an email has an account: a taken address gets a notice
by mail instead, an unknown one gets nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from libs.errors import BadRequest, ValidationFailed
from services.auth.accounts.repository import OneTimeTokenRepository
from services.auth.accounts.schemas import ChangePasswordIn, RegisterIn, ResetIn
from services.auth.core import mail
from services.auth.core.context import AuthContext, utcnow
from services.auth.core.feature_service import FeatureService
from services.auth.core.security import (
    COMMON_PASSWORDS,
    hash_password_async,
    new_opaque_token,
    sha256_hex,
    verify_password_async,
)
from services.auth.models import OneTimeToken, User
from services.auth.orgs.service import org_out
from services.auth.sessions.login_limits import account_key
from services.auth.settings import AuthSettings

VERIFY_EMAIL, RESET_PASSWORD = "verify_email", "reset_password"


def _weak_password(password: str, email: str | None, min_length: int, field: str) -> None:
    problem = None
    if len(password) < min_length:
        problem = f"Password must be at least {min_length} characters"
    elif password.lower() in COMMON_PASSWORDS or password.lower() == (email or "").lower():
        problem = "Password is too common"
    elif len(set(password)) < 4:
        problem = "Password needs more different characters"
    if problem:
        raise ValidationFailed(
            problem,
            code="weak_password",
            details=[{"field": f"body.{field}", "message": problem, "type": "weak_password"}],
        )


class AccountService(FeatureService):
    def __init__(self, ctx: AuthContext) -> None:
        super().__init__(ctx)
        self.one_time = OneTimeTokenRepository(ctx.session)

    # ----------------------------------------------------------------------- sign-up

    async def register(self, body: RegisterIn) -> None:
        """Create the account and its personal organization. The answer is the same when the
        email is taken (its owner gets a notice instead), so nobody learns who has an account."""
        await self._limit_public("register")
        _weak_password(body.password, body.email, self.settings.password_min_length, "password")
        password_hash = await hash_password_async(body.password)
        existing = await self.users.by_email(body.email)
        if existing is not None:
            await self._notify_existing(existing)
            return
        user = User(
            email=body.email,
            password_hash=password_hash,
            display_name=body.display_name.strip(),
            is_platform_admin=body.email
            in {e.lower() for e in self.settings.platform_admin_emails},
            recovery_code_hashes=[],
        )
        try:
            async with self.session.begin_nested():
                self.session.add(user)
                await self.session.flush()
        except IntegrityError:
            # registered concurrently by someone else
            existing = await self.users.by_email(body.email)
            if existing is not None:
                await self._notify_existing(existing)
            return
        org = await self.orgs.add_personal(
            user, body.display_name.strip() or body.email.split("@")[0]
        )
        await self._mail_link(user, VERIFY_EMAIL, self.settings.email_verify_ttl, mail.verification)
        await self.audit_user("user.signed_up", user, org.id)

    async def _notify_existing(self, user: User) -> None:
        if await self._mail_allowed(user.email):
            await self._queue_mail(
                user.email, mail.account_exists(self.settings), f"auth-mail-{uuid.uuid4().hex}"
            )

    # ------------------------------------------------------------ tokens sent by mail

    async def _mail_link(
        self,
        user: User,
        purpose: str,
        ttl: int,
        compose: Callable[[AuthSettings, str], tuple[str, str]],
    ) -> None:
        """Mail the user a new single-use token of ``purpose``; older ones stop working."""
        now = utcnow()
        await self.one_time.use_all(user.id, purpose, now)
        raw = new_opaque_token()
        row = OneTimeToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=sha256_hex(raw),
            expires_at=now + timedelta(seconds=ttl),
        )
        await self.one_time.add(row)
        await self._queue_mail(user.email, compose(self.settings, raw), f"auth-mail-{row.id}")

    async def _spend_token(self, raw: str, purpose: str) -> OneTimeToken:
        row = await self.one_time.by_hash(sha256_hex(raw), purpose)
        if row is None or row.used_at is not None or row.expires_at <= utcnow():
            raise BadRequest("The token is invalid, used or expired", code="invalid_token")
        row.used_at = utcnow()
        return row

    async def verify_email(self, token: str) -> None:
        row = await self._spend_token(token, VERIFY_EMAIL)
        user = await self.users.get(row.user_id)
        assert user is not None
        user.email_verified_at = user.email_verified_at or utcnow()
        await self.audit_user("auth.email.verified", user, user.personal_org_id)

    async def resend_verification(self) -> None:
        user, _ = await self.current_user()
        if user.email_verified_at is not None or not await self._mail_allowed(user.email):
            return
        await self._mail_link(user, VERIFY_EMAIL, self.settings.email_verify_ttl, mail.verification)

    # ---------------------------------------------------------------------- passwords

    async def forgot_password(self, email: str) -> None:
        await self._limit_public("forgot")
        user = await self.users.by_email(email)
        if user is None or not await self._mail_allowed(email):
            return
        await self._mail_link(
            user, RESET_PASSWORD, self.settings.password_reset_ttl, mail.password_reset
        )

    async def reset_password(self, body: ResetIn) -> None:
        row = await self._spend_token(body.token, RESET_PASSWORD)
        user = await self.users.get(row.user_id)
        assert user is not None  # FK
        _weak_password(
            body.new_password, user.email, self.settings.password_min_length, "new_password"
        )
        now = utcnow()
        user.password_hash = await hash_password_async(body.new_password)
        user.password_changed_at = now
        # the link reached the mailbox: the address is proven
        user.email_verified_at = user.email_verified_at or now
        await self.one_time.use_all(user.id, RESET_PASSWORD, now)
        await self._end_sessions(await self.sessions.active_for_user(user.id), "password_reset")
        await self.redis.delete(account_key(user.email))
        await self.audit_user("auth.password.reset", user, user.personal_org_id)

    async def change_password(self, body: ChangePasswordIn) -> None:
        user, sess = await self.current_user()
        if not await verify_password_async(user.password_hash, body.current_password):
            raise BadRequest("The current password is wrong", code="invalid_password")
        _weak_password(
            body.new_password, user.email, self.settings.password_min_length, "new_password"
        )
        user.password_hash = await hash_password_async(body.new_password)
        user.password_changed_at = utcnow()
        others = [
            s
            for s in await self.sessions.active_for_user(user.id)
            if sess is None or s.id != sess.id
        ]
        await self._end_sessions(others, "password_changed")
        await self.audit_user(
            "auth.password.changed",
            user,
            self._acting_org(user, sess),
            {"sessions_ended": len(others)},
        )
        await self._queue_mail(
            user.email, mail.password_changed(self.settings), f"auth-mail-{uuid.uuid4().hex}"
        )

    # ------------------------------------------------------------------------ profile

    async def me(self) -> dict[str, Any]:
        user, sess = await self.current_user()
        orgs = [org_out(o, m) for o, m in await self.orgs.for_user(user.id)]
        active_id = sess.org_id if sess else self.principal.org_id
        active = next((o for o in orgs if o["id"] == active_id), None)
        return {
            "user": {
                "id": user.id,
                "email": user.email,
                "display_name": user.display_name,
                "email_verified_at": user.email_verified_at,
                "totp_enabled": user.totp_enabled_at is not None,
                "personal_org_id": user.personal_org_id,
                "created_at": user.created_at,
            },
            "org": active,
            "organizations": orgs,
            "session_id": sess.id if sess else None,
        }
