"""Sign-in with an external provider: the authorize redirect with a single-use state bound to
the browser, then the callback that finds or creates the account and starts a session."""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import Any

import httpx
import orjson

from libs.errors import Conflict, NotFound, Unauthorized
from services.auth.core.context import AuthContext, utcnow
from services.auth.core.feature_service import FeatureService
from services.auth.models import Identity, User
from services.auth.oauth import providers
from services.auth.oauth.repository import IdentityRepository
from services.auth.sessions.schemas import TokenPair
from services.auth.sessions.service import SessionService
from services.auth.tokens.keys import KeyCache

OAUTH_STATE_PREFIX = "aistack:auth:oauth-state:"
OAUTH_STATE_COOKIE = "aistack_oauth_state"


class OAuthService(FeatureService):
    def __init__(
        self, ctx: AuthContext, keys: KeyCache, http: httpx.AsyncClient, cache: dict[str, Any]
    ) -> None:
        super().__init__(ctx)
        self.identities = IdentityRepository(ctx.session)
        self.session_service = SessionService(ctx, keys)
        self.http = http
        # identity providers' discovery documents and keys, WeCom access tokens
        self.cache = cache

    def oauth_callback_url(self, provider: str) -> str:
        base = self.settings.oauth_redirect_base or self.settings.public_url
        return f"{base.rstrip('/')}/v1/auth/oauth/{provider}/callback"

    def _oauth_client(self, provider: str) -> Any:
        if provider == "wechat" and self.settings.wechat:
            return providers.WeChatClient(self.settings.wechat, self.http)
        if provider == "wecom" and self.settings.wecom:
            return providers.WeComClient(self.settings.wecom, self.http, self.cache)
        cfg = self.settings.oidc_providers.get(provider)
        if cfg is None or provider in ("wechat", "wecom"):
            raise NotFound("Unknown sign-in provider", code="unknown_provider")
        return providers.OIDCClient(provider, cfg, self.http, self.cache)

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
        pending = providers.new_pending(provider, self.oauth_callback_url(provider))
        if isinstance(client, providers.OIDCClient):
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
        pending = providers.Pending(**orjson.loads(raw))
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
        ext: providers.ExternalIdentity = await client.finish(code, pending)
        link_by_email = True
        cfg = self.settings.oidc_providers.get(provider)
        if cfg is not None:
            link_by_email = cfg.link_by_verified_email
        user = await self._user_for_identity(ext, link_by_email)
        org_id, role = await self.session_service.org_for(user, None)
        return await self.session_service.start_session(
            user, org_id, role, {"method": "oauth", "provider": provider}
        )

    async def _user_for_identity(
        self, ext: providers.ExternalIdentity, link_by_email: bool
    ) -> User:
        now = utcnow()
        ident = await self.identities.by_subject(ext.provider, ext.subject)
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
        await self.users.add(user)
        org = await self.orgs.add_personal(user, ext.name or (email or "My").split("@")[0])
        await self.session.refresh(user)
        await self._link(user, ext)
        await self.audit_user("user.signed_up", user, org.id, {"method": ext.provider})
        return user

    async def _link(self, user: User, ext: providers.ExternalIdentity) -> None:
        await self.identities.add(
            Identity(user_id=user.id, provider=ext.provider, subject=ext.subject, email=ext.email)
        )
        await self.audit_user(
            "auth.identity.linked", user, user.personal_org_id, {"provider": ext.provider}
        )
