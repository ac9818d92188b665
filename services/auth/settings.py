"""Settings of the auth service (env prefix ``AUTH_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings, register_default_secret

DEV_KEY_ENCRYPTION_SECRET = "dev-auth-key-encryption-secret-change-me-000000"
register_default_secret(DEV_KEY_ENCRYPTION_SECRET)


class OIDCProvider(BaseModel):
    """One OpenID Connect issuer (Google, Microsoft Entra ID, Keycloak, ...)."""

    issuer: str
    client_id: str
    client_secret: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    token_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] = (
        "client_secret_basic"
    )
    # Entra ID's multi-tenant "common" endpoint issues tokens whose iss names the tenant
    issuer_template: bool = False
    link_by_verified_email: bool = True


class WeChatProvider(BaseModel):
    """WeChat Open Platform website login (QR code)."""

    app_id: str
    app_secret: str
    authorize_url: str = "https://open.weixin.qq.com/connect/qrconnect"
    api_base: str = "https://api.weixin.qq.com"
    scope: str = "snsapi_login"


class WeComProvider(BaseModel):
    """WeCom (企业微信) web login for one self-built app of one corporation."""

    corp_id: str
    agent_id: str
    secret: str
    authorize_url: str = "https://login.work.weixin.qq.com/wwlogin/sso/login"
    api_base: str = "https://qyapi.weixin.qq.com"


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    service_name: ClassVar[str] = "auth"
    port: int = 8001

    # access tokens (EdDSA JWTs) and refresh tokens
    jwt_issuer: str = "aistack"
    jwt_audience: str = "aistack-api"
    access_token_ttl: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl: int = Field(default=30 * 86_400, ge=300)
    # encrypts signing keys' private halves and TOTP secrets at rest
    key_encryption_secret: str = DEV_KEY_ENCRYPTION_SECRET
    # how long an in-process copy of the active signing key is trusted before re-reading it
    signing_key_cache_seconds: int = 60

    # accounts
    password_min_length: int = Field(default=10, ge=8)
    email_verify_ttl: int = 48 * 3600
    password_reset_ttl: int = 3600
    invite_ttl: int = 7 * 86_400
    # emails that become platform administrators when they register
    platform_admin_emails: list[str] = Field(default_factory=list)
    # where links in emails point (the gateway's public URL or the web app)
    public_url: str = "http://127.0.0.1:8000"

    # abuse limits on failed logins (fixed windows)
    login_failures_per_account: int = 5
    login_failures_per_ip: int = 30
    login_failure_window: int = 900
    # forgot-password and resend mails per address per hour
    mails_per_address_per_hour: int = 5
    # sign-ups and reset requests per client address per hour (each costs a hash or a mail)
    public_requests_per_ip_per_hour: int = 30
    # token refreshes per client address per minute (many users may share one address)
    refreshes_per_ip_per_minute: int = Field(default=120, ge=1)

    # feature flags: evaluated sets are cached in Redis this long
    flags_cache_seconds: int = 30

    # session revocations still owed to the gateways (auth.pending_revocations): each auth
    # process and the auth worker look every second while an announcement is failing, else
    # this often; it bounds how late, after Redis is back, one left by a process that died
    # in the outage (and was not restarted) is announced
    revocation_replay_idle_seconds: float = Field(default=15.0, gt=0)

    # external sign-in: {"google": {"issuer": ..., "client_id": ..., "client_secret": ...}}
    oidc_providers: dict[str, OIDCProvider] = Field(default_factory=dict)
    wechat: WeChatProvider | None = None
    wecom: WeComProvider | None = None
    # where providers send the browser back: <this>/v1/auth/oauth/<provider>/callback
    # (default: public_url)
    oauth_redirect_base: str | None = None
    oauth_state_ttl: int = 600

    # outgoing mail
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "aistack <no-reply@aistack.local>"
    smtp_starttls: bool = False
    smtp_timeout: float = 10.0

    def secret_values(self) -> dict[str, str]:
        return {
            **super().secret_values(),
            "key_encryption_secret": self.key_encryption_secret,
        }


def get_settings() -> AuthSettings:
    return AuthSettings()
