"""Domain logic of the auth service."""

from __future__ import annotations

import hmac
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pyotp
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from libs.context import get_request_id
from libs.db import after_commit, commit, rollback
from libs.errors import (
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from libs.flags import (
    FLAGS_VERSION_KEY,
    FlagDefinition,
    definitions_published,
    evaluate_all,
    evaluated_key,
    publish_all,
    publish_flag,
)
from libs.identity import Principal
from libs.permissions import ROLE_RANK, ROLE_SCOPES, Role
from libs.ratelimit import hit, hit_many
from libs.redis import RedisUnavailable, guard_for
from services.auth import mail, oauth, revocations
from services.auth.models import (
    ApiKey,
    AuditEvent,
    AuthSession,
    FeatureFlag,
    Identity,
    Invite,
    Membership,
    OneTimeToken,
    Organization,
    RefreshToken,
    SigningKey,
    User,
)
from services.auth.repository import (
    ApiKeyRepository,
    AuditRepository,
    FlagRepository,
    InviteRepository,
    OneTimeTokenRepository,
    OrgRepository,
    RefreshTokenRepository,
    SessionRepository,
    UserRepository,
)
from services.auth.schemas import (
    ApiKeyCreate,
    ChangePasswordIn,
    FlagIn,
    InviteCreate,
    LoginIn,
    RegisterIn,
    ResetIn,
    TokenPair,
)
from services.auth.security import (
    API_KEY_SHOWN_PREFIX_LEN,
    COMMON_PASSWORDS,
    Cipher,
    hash_password_async,
    looks_like_api_key,
    needs_rehash,
    new_api_key,
    new_opaque_token,
    new_recovery_code,
    normalise_recovery_code,
    sha256_hex,
    verify_password_async,
)
from services.auth.settings import AuthSettings
from services.auth.tokens import KeyCache, SigningKeys, access_claims, public_jwk, sign

log = logging.getLogger("aistack.auth")

# Redis contracts shared with the gateway
APIKEY_CACHE_PREFIX = "aistack:apikey:"
APIKEY_REVOKED_CHANNEL = "aistack:apikey:revoked"
SESSION_REVOKED_PREFIX = revocations.SESSION_REVOKED_PREFIX
SESSION_REVOKED_CHANNEL = revocations.SESSION_REVOKED_CHANNEL
_LOGIN_FAIL = "aistack:auth:login-fail:"
_APIKEY_USED = "aistack:auth:apikey-used:"
# a hung Redis must not hold an introspection past the gateway's auth timeout (2 s)
_MAIL_COUNT = "aistack:auth:mail:"
OAUTH_STATE_PREFIX = "aistack:auth:oauth-state:"
OAUTH_STATE_COOKIE = "aistack_oauth_state"

VERIFY_EMAIL, RESET_PASSWORD = "verify_email", "reset_password"
RECOVERY_CODES = 10
TOTP_ISSUER = "aistack"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Client:
    """Where a request came from (the gateway appends the client address to X-Forwarded-For)."""

    ip: str | None
    user_agent: str


@dataclass
class AuthContext:
    session: AsyncSession
    redis: Redis
    settings: AuthSettings
    keys: KeyCache
    client: Client
    principal: Principal | None = None
    # outgoing calls to identity providers, and their cached discovery/keys
    http: httpx.AsyncClient | None = None
    oauth_cache: dict[str, Any] = field(default_factory=dict)


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


def flag_definition(flag: FeatureFlag) -> FlagDefinition:
    """A stored flag as every service evaluates it (libs.flags)."""
    return FlagDefinition(
        key=flag.key,
        enabled=flag.enabled,
        rollout_percentage=flag.rollout_percentage,
        org_overrides={str(k): bool(v) for k, v in (flag.org_overrides or {}).items()},
    )


async def publish_flag_definitions(session: AsyncSession, redis: Redis) -> int:
    """Write every flag definition to Redis for the other services (auth's startup)."""

    async def load() -> list[FlagDefinition]:
        return [flag_definition(f) for f in await FlagRepository(session).everything()]

    return await publish_all(redis, load)


class AuthService:
    """Accounts, sessions, tokens, organizations, API keys, flags: one unit of work each call."""

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        self.session = ctx.session
        self.redis = ctx.redis
        self.settings = ctx.settings
        self.users = UserRepository(ctx.session)
        self.orgs = OrgRepository(ctx.session)
        self.sessions = SessionRepository(ctx.session)
        self.refresh_tokens = RefreshTokenRepository(ctx.session)
        self.one_time = OneTimeTokenRepository(ctx.session)
        self.invites = InviteRepository(ctx.session)
        self.api_keys = ApiKeyRepository(ctx.session)
        self.audits = AuditRepository(ctx.session)
        self.flags = FlagRepository(ctx.session)
        self.signing = SigningKeys(ctx.session, ctx.settings, ctx.keys)
        self.cipher = Cipher(ctx.settings.key_encryption_secret)

    # ------------------------------------------------------------------------ plumbing

    @property
    def principal(self) -> Principal:
        if self.ctx.principal is None:
            raise Unauthorized("Authentication required")
        return self.ctx.principal

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
        self.session.add(
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
        await self.session.flush()

    async def _fail_committed(self, error: AppError) -> AppError:
        """Commit what was recorded (audit, revocations) although the request fails."""
        await commit(self.session)
        return error

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

    async def _queue_mail(self, to: str | None, message: tuple[str, str], job_id: str) -> None:
        if not to:
            return  # accounts from WeChat/WeCom may have no address
        await mail.queue_email(
            self.session, self.redis, self.settings, to=to, message=message, job_id=job_id
        )

    async def _one_time_token(self, user: User, purpose: str, ttl: int) -> tuple[str, uuid.UUID]:
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
        return raw, row.id

    async def _spend_token(self, raw: str, purpose: str) -> OneTimeToken:
        row = await self.one_time.by_hash(sha256_hex(raw), purpose)
        if row is None or row.used_at is not None or row.expires_at <= utcnow():
            raise BadRequest("The token is invalid, used or expired", code="invalid_token")
        row.used_at = utcnow()
        return row

    async def _revoked_sessions_published(self, session_ids: list[uuid.UUID]) -> None:
        """Tell gateways these sessions ended (their access tokens die early): recorded in
        this transaction, announced after the commit, replayed if Redis misses it
        (services/auth/revocations.py)."""
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

    # -------------------------------------------------------------------- the caller

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

    # ------------------------------------------------------------------------- tokens

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
        key = await self.signing.active()
        claims = access_claims(
            self.settings, user_id=user.id, org_id=sess.org_id, role=role, session_id=sess.id
        )
        return TokenPair(
            access_token=sign(claims, key),
            refresh_token=raw,
            expires_in=self.settings.access_token_ttl,
            refresh_expires_in=self.settings.refresh_token_ttl,
            session_id=sess.id,
            org_id=sess.org_id,
        )

    async def _org_for(self, user: User, wanted: uuid.UUID | None) -> tuple[uuid.UUID, str]:
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

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k) for k in await self.signing.published()]}

    async def rotate_signing_key(self) -> SigningKey:
        await self.require_platform_admin()
        new, old = await self.signing.rotate()
        await self.audit(
            "signing_key.rotated",
            target_type="signing_key",
            target_id=new.kid,
            details={"retiring": [k.kid for k in old]},
        )
        return new

    async def list_signing_keys(self) -> list[SigningKey]:
        await self.require_platform_admin()
        return await self.signing.all()

    # -------------------------------------------------------------------- accounts

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
        org = Organization(
            name=f"{body.display_name.strip() or body.email.split('@')[0]}'s workspace"[:200],
            personal=True,
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
        org.created_by = user.id
        self.session.add(org)
        await self.session.flush()
        self.session.add(Membership(org_id=org.id, user_id=user.id, role=Role.OWNER.value))
        user.personal_org_id = org.id
        await self.session.flush()
        token, token_id = await self._one_time_token(
            user, VERIFY_EMAIL, self.settings.email_verify_ttl
        )
        await self._queue_mail(
            user.email, mail.verification(self.settings, token), f"auth-mail-{token_id}"
        )
        await self.audit(
            "user.signed_up",
            org_id=org.id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
        )

    async def _notify_existing(self, user: User) -> None:
        if await self._mail_allowed(user.email):
            await self._queue_mail(
                user.email, mail.account_exists(self.settings), f"auth-mail-{uuid.uuid4().hex}"
            )

    def _login_limits(self, email: str | None) -> list[tuple[str, int, float]]:
        window = float(self.settings.login_failure_window)
        limits = [
            (
                f"{_LOGIN_FAIL}acct:{sha256_hex(email or '')}",
                self.settings.login_failures_per_account,
                window,
            )
        ]
        if self.ctx.client.ip:
            limits.append(
                (
                    f"{_LOGIN_FAIL}ip:{self.ctx.client.ip}",
                    self.settings.login_failures_per_ip,
                    window,
                )
            )
        return limits

    async def _check_login_limits(self, limits: list[tuple[str, int, float]]) -> None:
        # cost 0 only reads; a limit with no room left refuses before any password check
        result = await hit_many(self.redis, limits, cost=0)
        waits = []
        for (_key, limit, window), d in zip(limits, result.decisions, strict=True):
            if d.remaining <= 0:
                waits.append(d.reset_seconds - window + window / limit)
        if waits:
            retry = max(1, math.ceil(max(waits)))
            raise RateLimited(
                "Too many failed sign-in attempts; try again later",
                code="too_many_attempts",
                headers={"Retry-After": str(retry)},
                details={"retry_after": retry},
            )

    async def _login_failed(
        self, limits: list[tuple[str, int, float]], user: User | None, email: str, reason: str
    ) -> AppError:
        await hit_many(self.redis, limits, cost=1, force=True)
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

    async def login(self, body: LoginIn) -> TokenPair:
        limits = self._login_limits(body.email)
        await self._check_login_limits(limits)
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
            if not self._second_factor(user, body.totp_code, body.recovery_code):
                raise await self._login_failed(limits, user, body.email, "invalid_totp")
        # a good sign-in clears the account's failures (not the address's)
        await self.redis.delete(limits[0][0])
        if user.password_hash and needs_rehash(user.password_hash):
            user.password_hash = await hash_password_async(body.password)
        org_id, role = await self._org_for(user, body.org_id)
        return await self._start_session(
            user, org_id, role, {"second_factor": user.totp_enabled_at is not None}
        )

    async def _start_session(
        self, user: User, org_id: uuid.UUID, role: str, details: dict[str, Any]
    ) -> TokenPair:
        """A new session (device) for a user who just proved who they are, with its tokens."""
        sess = AuthSession(
            user_id=user.id,
            org_id=org_id,
            user_agent=self.ctx.client.user_agent[:512],
            ip=self.ctx.client.ip,
        )
        await self.sessions.add(sess)
        pair = await self._issue(user, sess, role)
        await self.audit(
            "auth.login.succeeded",
            org_id=org_id,
            actor_user_id=user.id,
            target_type="session",
            target_id=sess.id,
            details=details,
        )
        return pair

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
            await self.audit(
                "auth.refresh_token.reused",
                org_id=sess.org_id,
                actor_user_id=token.user_id,
                target_type="session",
                target_id=sess.id,
                details={"token_id": str(token.id)},
            )
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
        org_id, role = await self._org_for(user, sess.org_id)
        sess.org_id = org_id
        sess.last_seen_at = now
        if self.ctx.client.ip:
            sess.ip = self.ctx.client.ip
        return await self._issue(user, sess, role)

    async def logout(self) -> None:
        user, sess = await self.current_user()
        if sess is None:
            return
        await self._end_sessions([sess], "logout")
        await self.audit(
            "auth.logout",
            org_id=sess.org_id,
            actor_user_id=user.id,
            target_type="session",
            target_id=sess.id,
        )

    async def logout_all(self) -> int:
        user, sess = await self.current_user()
        live = await self.sessions.active_for_user(user.id)
        await self._end_sessions(live, "logout_all")
        await self.audit(
            "auth.logout_all",
            org_id=sess.org_id if sess else user.personal_org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
            details={"sessions": len(live)},
        )
        return len(live)

    async def me(self) -> dict[str, Any]:
        user, sess = await self.current_user()
        orgs = [self._org_out(o, m) for o, m in await self.orgs.for_user(user.id)]
        active_id = sess.org_id if sess else self.principal.org_id
        active = next((o for o in orgs if o["id"] == active_id), None)
        return {
            "user": self._user_out(user),
            "org": active,
            "organizations": orgs,
            "session_id": sess.id if sess else None,
        }

    @staticmethod
    def _user_out(user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "email": user.email,
            "display_name": user.display_name,
            "email_verified_at": user.email_verified_at,
            "totp_enabled": user.totp_enabled_at is not None,
            "personal_org_id": user.personal_org_id,
            "created_at": user.created_at,
        }

    @staticmethod
    def _org_out(org: Organization, m: Membership) -> dict[str, Any]:
        return {
            "id": org.id,
            "name": org.name,
            "personal": org.personal,
            "role": m.role,
            "created_at": org.created_at,
        }

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
        await self.audit(
            "auth.password.changed",
            org_id=sess.org_id if sess else user.personal_org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
            details={"sessions_ended": len(others)},
        )
        await self._queue_mail(
            user.email, mail.password_changed(self.settings), f"auth-mail-{uuid.uuid4().hex}"
        )

    async def forgot_password(self, email: str) -> None:
        await self._limit_public("forgot")
        user = await self.users.by_email(email)
        if user is None or not await self._mail_allowed(email):
            return
        token, token_id = await self._one_time_token(
            user, RESET_PASSWORD, self.settings.password_reset_ttl
        )
        await self._queue_mail(
            user.email, mail.password_reset(self.settings, token), f"auth-mail-{token_id}"
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
        await self.redis.delete(self._login_limits(user.email)[0][0])
        await self.audit(
            "auth.password.reset",
            org_id=user.personal_org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
        )

    async def verify_email(self, token: str) -> None:
        row = await self._spend_token(token, VERIFY_EMAIL)
        user = await self.users.get(row.user_id)
        assert user is not None
        user.email_verified_at = user.email_verified_at or utcnow()
        await self.audit(
            "auth.email.verified",
            org_id=user.personal_org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
        )

    async def resend_verification(self) -> None:
        user, _ = await self.current_user()
        if user.email_verified_at is not None or not await self._mail_allowed(user.email):
            return
        token, token_id = await self._one_time_token(
            user, VERIFY_EMAIL, self.settings.email_verify_ttl
        )
        await self._queue_mail(
            user.email, mail.verification(self.settings, token), f"auth-mail-{token_id}"
        )

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
        await self.audit(
            "auth.session.ended",
            org_id=target.org_id,
            actor_user_id=user.id,
            target_type="session",
            target_id=target.id,
        )

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

    # --------------------------------------------------------------------------- TOTP

    def _totp(self, user: User) -> pyotp.TOTP:
        assert user.totp_secret_enc is not None
        return pyotp.TOTP(self.cipher.decrypt(user.totp_secret_enc).decode())

    def _check_totp(self, user: User, code: str) -> bool:
        if user.totp_secret_enc is None or not code.isdigit():
            return False
        totp = self._totp(user)
        step_now = int(time.time()) // totp.interval
        for step in (step_now - 1, step_now, step_now + 1):
            # a code is accepted once: a replayed (or older) step is refused
            if user.totp_last_step is not None and step <= user.totp_last_step:
                continue
            if hmac.compare_digest(totp.at(step * totp.interval), code):
                user.totp_last_step = step
                return True
        return False

    def _use_recovery_code(self, user: User, code: str) -> bool:
        digest = sha256_hex(normalise_recovery_code(code))
        codes = list(user.recovery_code_hashes or [])
        for stored in codes:
            if hmac.compare_digest(stored, digest):
                codes.remove(stored)
                user.recovery_code_hashes = codes
                return True
        return False

    def _second_factor(self, user: User, totp_code: str | None, recovery: str | None) -> bool:
        if totp_code and self._check_totp(user, totp_code):
            return True
        return bool(recovery) and self._use_recovery_code(user, recovery or "")

    async def totp_enroll(self) -> dict[str, str]:
        user, _ = await self.current_user()
        if user.totp_enabled_at is not None:
            raise Conflict("TOTP is already enabled", code="totp_already_enabled")
        secret = pyotp.random_base32()
        user.totp_secret_enc = self.cipher.encrypt(secret.encode())
        user.totp_last_step = None
        await self.session.flush()
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)
        return {"secret": secret, "otpauth_uri": uri}

    async def totp_verify(self, code: str) -> list[str]:
        user, sess = await self.current_user()
        if user.totp_enabled_at is not None:
            raise Conflict("TOTP is already enabled", code="totp_already_enabled")
        if user.totp_secret_enc is None:
            raise BadRequest("Enroll first (POST /v1/auth/totp/enroll)", code="totp_not_enrolled")
        if not self._check_totp(user, code):
            raise BadRequest("Invalid TOTP code", code="invalid_totp_code")
        codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
        user.recovery_code_hashes = [sha256_hex(c) for c in codes]
        user.totp_enabled_at = utcnow()
        await self.audit(
            "auth.totp.enabled",
            org_id=sess.org_id if sess else user.personal_org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
        )
        return codes

    async def totp_disable(self, password: str, code: str) -> None:
        user, sess = await self.current_user()
        if user.totp_enabled_at is None:
            raise BadRequest("TOTP is not enabled", code="totp_not_enabled")
        if not await verify_password_async(user.password_hash, password):
            raise BadRequest("The password is wrong", code="invalid_password")
        if not self._second_factor(user, code, code):
            raise BadRequest("Invalid TOTP or recovery code", code="invalid_totp_code")
        user.totp_enabled_at = None
        user.totp_secret_enc = None
        user.totp_last_step = None
        user.recovery_code_hashes = []
        await self.audit(
            "auth.totp.disabled",
            org_id=sess.org_id if sess else user.personal_org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
        )

    # -------------------------------------------------------------------- organizations

    async def create_org(self, name: str) -> dict[str, Any]:
        user, _ = await self.current_user()
        org = Organization(name=name, personal=False, created_by=user.id)
        await self.orgs.add(org)
        m = Membership(org_id=org.id, user_id=user.id, role=Role.OWNER.value)
        self.session.add(m)
        await self.session.flush()
        await self.session.refresh(org)
        await self.audit("org.created", org_id=org.id, target_type="org", target_id=org.id)
        return self._org_out(org, m)

    async def list_orgs(self) -> list[dict[str, Any]]:
        user, _ = await self.current_user()
        return [self._org_out(o, m) for o, m in await self.orgs.for_user(user.id)]

    async def get_org(self, org_id: uuid.UUID) -> dict[str, Any]:
        user, _ = await self.current_user()
        m = await self._membership(org_id, user.id)
        org = await self.orgs.get(org_id)
        assert org is not None
        return self._org_out(org, m)

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
        # what they created there stops working with their membership
        keys = await self.api_keys.live_of_member(org_id, user_id)
        await self._revoke_keys(keys, org_id, reason="member_removed")

    async def invite(self, org_id: uuid.UUID, body: InviteCreate) -> Invite:
        user, _ = await self.current_user()
        me = await self._org_admin(org_id, user.id)
        if ROLE_RANK[body.role] > ROLE_RANK[Role(me.role)]:
            raise Forbidden("You cannot invite above your own role", code="role_too_high")
        existing = await self.users.by_email(body.email)
        if existing and await self.orgs.membership(org_id, existing.id):
            raise Conflict("That person is already a member", code="already_member")
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
        return inv

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
        return self._org_out(org, m)

    async def list_audit(
        self,
        org_id: uuid.UUID,
        *,
        action: str | None,
        actor: uuid.UUID | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        offset: int,
    ) -> tuple[list[AuditEvent], bool]:
        user, _ = await self.current_user()
        await self._org_admin(org_id, user.id)
        rows = await self.audits.page(
            org_id,
            action=action,
            actor=actor,
            since=since,
            until=until,
            limit=limit + 1,
            offset=offset,
        )
        return rows[:limit], len(rows) > limit

    # ------------------------------------------------------------------------ API keys

    async def _key_manager(self) -> tuple[User, Membership]:
        user, _ = await self.current_user()
        org_id = self.principal.require_org()
        return user, await self._membership(org_id, user.id)

    async def create_api_key(self, body: ApiKeyCreate) -> tuple[ApiKey, str]:
        user, m = await self._key_manager()
        allowed = ROLE_SCOPES[Role(m.role)]
        if m.role == Role.VIEWER.value:
            raise Forbidden("Viewers cannot create API keys", code="role_too_low")
        beyond = sorted(set(body.scopes) - allowed)
        if beyond:
            raise Forbidden(
                f"Your role cannot grant: {', '.join(beyond)}",
                code="scope_not_allowed",
                details={"scopes": beyond},
            )
        if body.expires_at is not None and body.expires_at <= utcnow():
            raise ValidationFailed(
                "expires_at must be in the future",
                details=[
                    {
                        "field": "body.expires_at",
                        "message": "must be in the future",
                        "type": "value_error",
                    }
                ],
            )
        raw = new_api_key()
        key = ApiKey(
            org_id=m.org_id,
            user_id=user.id,
            name=body.name,
            prefix=raw[:API_KEY_SHOWN_PREFIX_LEN],
            key_hash=sha256_hex(raw),
            scopes=body.scopes,
            expires_at=body.expires_at,
            rpm_limit=body.rpm_limit,
            tpm_limit=body.tpm_limit,
        )
        await self.api_keys.add(key)
        await self.session.refresh(key)
        await self.audit(
            "api_key.created",
            org_id=m.org_id,
            target_type="api_key",
            target_id=key.id,
            details={"name": key.name, "scopes": key.scopes, "prefix": key.prefix},
        )
        return key, raw

    async def list_api_keys(
        self, limit: int, offset: int, include_revoked: bool
    ) -> tuple[list[ApiKey], bool]:
        _, m = await self._key_manager()
        rows = await self.api_keys.page(m.org_id, limit + 1, offset, include_revoked)
        return rows[:limit], len(rows) > limit

    async def get_api_key(self, key_id: uuid.UUID) -> ApiKey:
        _, m = await self._key_manager()
        key = await self.api_keys.get_for_org(m.org_id, key_id)
        if key is None:
            raise NotFound("API key not found", code="api_key_not_found")
        return key

    async def revoke_api_key(self, key_id: uuid.UUID) -> None:
        user, m = await self._key_manager()
        key = await self.api_keys.get_for_org(m.org_id, key_id)
        if key is None:
            raise NotFound("API key not found", code="api_key_not_found")
        if key.user_id != user.id and ROLE_RANK[Role(m.role)] < ROLE_RANK[Role.ADMIN]:
            raise Forbidden(
                "Only its creator or an admin can revoke a key", code="org_admin_required"
            )
        await self._revoke_keys([key], key.org_id, reason=None)

    async def _revoke_keys(self, keys: list[ApiKey], org_id: uuid.UUID, reason: str | None) -> None:
        """Revoke now; after commit, gateways drop their cached introspection at once."""
        live = [k for k in keys if k.revoked_at is None]
        if not live:
            return
        now = utcnow()
        for key in live:
            key.revoked_at = now
        await self.session.flush()
        revoked = [(k.id, k.key_hash) for k in live]
        redis = self.redis

        async def drop_caches() -> None:
            # the gateway caches introspection for a few seconds: drop it everywhere at once
            try:
                pipe = redis.pipeline(transaction=False)
                for _, key_hash in revoked:
                    pipe.delete(APIKEY_CACHE_PREFIX + key_hash)
                    pipe.publish(APIKEY_REVOKED_CHANNEL, key_hash)
                await pipe.execute()
            except Exception:
                log.warning(
                    "could not announce the revocation of keys %s",
                    [str(key_id) for key_id, _ in revoked],
                    exc_info=True,
                )

        after_commit(self.session, drop_caches)
        for key in live:
            details: dict[str, Any] = {"name": key.name, "prefix": key.prefix}
            if reason is not None:
                details["reason"] = reason
            await self.audit(
                "api_key.revoked",
                org_id=org_id,
                target_type="api_key",
                target_id=key.id,
                details=details,
            )

    async def introspect(self, raw: str) -> dict[str, Any]:
        p = self.principal
        if p.kind != "service":
            raise Forbidden("Internal route", code="service_principal_required")
        inactive = {"active": False}
        if not looks_like_api_key(raw):
            return inactive
        key = await self.api_keys.by_hash(sha256_hex(raw))
        now = utcnow()
        if key is None or key.revoked_at is not None:
            return inactive
        if key.expires_at is not None and key.expires_at <= now:
            return inactive
        # last-used is informative: write it at most once a minute per key. Without Redis
        # (refused, or hung past a short wait) it is skipped, not an error: the gateway asks
        # here precisely when its own Redis cache is down, within its own short timeout, and
        # every API call would fail with it.
        # The guard (libs.redis) skips Redis at once while it is known to be down, so a hung
        # Redis costs one short wait per outage here, not one per introspection.
        try:
            first_this_minute = await guard_for(self.redis).run(
                "auth_api_key_last_used",
                self.redis.set(f"{_APIKEY_USED}{key.id}", b"1", ex=60, nx=True),
            )
        except RedisUnavailable as exc:
            log.debug("api key %s: last-used not recorded (%s)", key.id, exc)
            first_this_minute = False
        if first_this_minute:
            await self.session.execute(
                update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now)
            )
        return {
            "active": True,
            "key_id": key.id,
            "org_id": key.org_id,
            "user_id": key.user_id,
            "scopes": list(key.scopes),
            "expires_at": key.expires_at,
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "plan": None,
        }

    # --------------------------------------------------------------------- feature flags

    @staticmethod
    def flag_out(flag: FeatureFlag) -> dict[str, Any]:
        return {
            "key": flag.key,
            "description": flag.description,
            "enabled": flag.enabled,
            "rollout_percentage": flag.rollout_percentage,
            "org_overrides": dict(flag.org_overrides or {}),
            "updated_at": flag.updated_at,
        }

    def _flag_changed(self, key: str, definition: FlagDefinition | None) -> None:
        """After commit: the new definition reaches Redis and the flags version moves on."""
        redis = self.redis

        async def publish() -> None:
            try:
                await publish_flag(redis, key, definition)
            except Exception:
                log.warning("could not publish the change of flag %s", key, exc_info=True)

        after_commit(self.session, publish)

    async def list_flags(self) -> list[FeatureFlag]:
        await self.require_platform_admin()
        return await self.flags.everything()

    async def get_flag(self, key: str) -> FeatureFlag:
        await self.require_platform_admin()
        flag = await self.flags.by_key(key)
        if flag is None:
            raise NotFound("Flag not found", code="flag_not_found")
        return flag

    async def put_flag(self, key: str, body: FlagIn) -> tuple[FeatureFlag, bool]:
        await self.require_platform_admin()
        flag = await self.flags.by_key(key)
        created = flag is None
        if flag is None:
            flag = FeatureFlag(key=key)
            self.session.add(flag)
        flag.enabled = body.enabled
        flag.description = body.description
        flag.rollout_percentage = body.rollout_percentage
        flag.org_overrides = {str(k): v for k, v in body.org_overrides.items()}
        await self.session.flush()
        await self.session.refresh(flag)
        self._flag_changed(key, flag_definition(flag))
        await self.audit(
            "flag.updated",
            target_type="flag",
            target_id=key,
            details={"enabled": body.enabled, "rollout_percentage": body.rollout_percentage},
        )
        return flag, created

    async def delete_flag(self, key: str) -> None:
        flag = await self.get_flag(key)
        await self.flags.delete(flag)
        self._flag_changed(key, None)
        await self.audit("flag.deleted", target_type="flag", target_id=key)

    async def evaluated_flags(self) -> dict[str, Any]:
        org_id = self.principal.require_org()
        version = int(await self.redis.get(FLAGS_VERSION_KEY) or 0)
        cache_key = evaluated_key(version, org_id)
        cached = await self.redis.get(cache_key)
        if cached is not None:
            return {"org_id": org_id, "flags": orjson.loads(cached)}
        stored = await self.flags.everything()
        if stored and not await definitions_published(self.redis):
            # Redis lost them (flushed, replaced): the other services read them from there
            await publish_flag_definitions(self.session, self.redis)
            version = int(await self.redis.get(FLAGS_VERSION_KEY) or 0)
            cache_key = evaluated_key(version, org_id)
        flags = evaluate_all((flag_definition(f) for f in stored), org_id)
        await self.redis.set(cache_key, orjson.dumps(flags), ex=self.settings.flags_cache_seconds)
        return {"org_id": org_id, "flags": flags}

    # ------------------------------------------------------------ external sign-in

    def oauth_callback_url(self, provider: str) -> str:
        base = self.settings.oauth_redirect_base or self.settings.public_url
        return f"{base.rstrip('/')}/v1/auth/oauth/{provider}/callback"

    def _oauth_client(self, provider: str) -> Any:
        http = self.ctx.http
        assert http is not None, "the app's HTTP client is missing"
        if provider == "wechat" and self.settings.wechat:
            return oauth.WeChatClient(self.settings.wechat, http)
        if provider == "wecom" and self.settings.wecom:
            return oauth.WeComClient(self.settings.wecom, http, self.ctx.oauth_cache)
        cfg = self.settings.oidc_providers.get(provider)
        if cfg is None or provider in ("wechat", "wecom"):
            raise NotFound("Unknown sign-in provider", code="unknown_provider")
        return oauth.OIDCClient(provider, cfg, http, self.ctx.oauth_cache)

    def oauth_providers(self) -> list[dict[str, str]]:
        out = [{"name": n, "kind": "oidc"} for n in sorted(self.settings.oidc_providers)]
        if self.settings.wechat:
            out.append({"name": "wechat", "kind": "wechat"})
        if self.settings.wecom:
            out.append({"name": "wecom", "kind": "wecom"})
        return [p for p in out if p["kind"] != "oidc" or p["name"] not in ("wechat", "wecom")]

    async def oauth_start(self, provider: str, login_hint: str | None) -> tuple[str, str]:
        """The provider URL to send the browser to, and the state to bind to it."""
        client = self._oauth_client(provider)
        pending = oauth.new_pending(provider, self.oauth_callback_url(provider))
        if isinstance(client, oauth.OIDCClient):
            url = await client.authorization_url(pending, login_hint)
        else:
            url = client.authorization_url(pending)
        await self.redis.set(
            OAUTH_STATE_PREFIX + pending.state,
            orjson.dumps(asdict(pending)),
            ex=self.settings.oauth_state_ttl,
        )
        return url, pending.state

    async def oauth_finish(
        self,
        provider: str,
        *,
        code: str | None,
        state: str | None,
        bound_state: str | None,
        error: str | None,
    ) -> TokenPair:
        """Check state (single use, bound to the browser that started), exchange the code,
        find or create the account, and start a session."""
        if not state or not bound_state or not hmac.compare_digest(state, bound_state):
            # a callback this browser did not start: login CSRF
            raise Unauthorized(
                "This sign-in was not started from this browser", code="oauth_state_mismatch"
            )
        raw = await self.redis.getdel(OAUTH_STATE_PREFIX + state)
        if raw is None:
            raise Unauthorized(
                "The sign-in expired or was already used", code="oauth_state_invalid"
            )
        pending = oauth.Pending(**orjson.loads(raw))
        if pending.provider != provider:
            raise Unauthorized(
                "The sign-in belongs to another provider", code="oauth_state_invalid"
            )
        if error or not code:
            raise Unauthorized(
                "The identity provider did not sign you in",
                code="oauth_denied",
                details={"error": (error or "no_code")[:100]},
            )
        client = self._oauth_client(provider)
        ext: oauth.ExternalIdentity = await client.finish(code, pending)
        link_by_email = True
        cfg = self.settings.oidc_providers.get(provider)
        if cfg is not None:
            link_by_email = cfg.link_by_verified_email
        user = await self._user_for_identity(ext, link_by_email)
        org_id, role = await self._org_for(user, None)
        return await self._start_session(
            user, org_id, role, {"method": "oauth", "provider": provider}
        )

    async def _user_for_identity(self, ext: oauth.ExternalIdentity, link_by_email: bool) -> User:
        now = utcnow()
        stmt = select(Identity).where(
            Identity.provider == ext.provider, Identity.subject == ext.subject
        )
        ident = (await self.session.scalars(stmt)).one_or_none()
        if ident is not None:
            ident.last_login_at = now
            ident.email = ext.email
            user = await self.users.get(ident.user_id)
            assert user is not None  # FK
            return user
        email = ext.email if ext.email and len(ext.email) <= 320 else None
        if email:
            existing = await self.users.by_email(email)
            if existing is not None:
                if not (ext.email_verified and link_by_email):
                    raise Conflict(
                        "An account already uses this email; sign in to it first",
                        code="email_in_use",
                    )
                if existing.email_verified_at is None:
                    # whoever registered this address unverified never proved owning it: the
                    # provider just did, so their password and sessions must not survive
                    existing.password_hash = None
                    existing.email_verified_at = now
                    await self._end_sessions(
                        await self.sessions.active_for_user(existing.id), "account_claimed"
                    )
                await self._link(existing, ext)
                return existing
        user = User(
            email=email,
            password_hash=None,
            display_name=ext.name,
            email_verified_at=now if email and ext.email_verified else None,
            is_platform_admin=False,
            recovery_code_hashes=[],
        )
        self.session.add(user)
        await self.session.flush()
        org = Organization(
            name=f"{ext.name or (email or 'My').split('@')[0]}'s workspace"[:200],
            personal=True,
            created_by=user.id,
        )
        self.session.add(org)
        await self.session.flush()
        self.session.add(Membership(org_id=org.id, user_id=user.id, role=Role.OWNER.value))
        user.personal_org_id = org.id
        await self.session.flush()
        await self.session.refresh(user)
        await self._link(user, ext)
        await self.audit(
            "user.signed_up",
            org_id=org.id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
            details={"method": ext.provider},
        )
        return user

    async def _link(self, user: User, ext: oauth.ExternalIdentity) -> None:
        self.session.add(
            Identity(user_id=user.id, provider=ext.provider, subject=ext.subject, email=ext.email)
        )
        await self.session.flush()
        await self.audit(
            "auth.identity.linked",
            org_id=user.personal_org_id,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
            details={"provider": ext.provider},
        )
