"""Database models of the auth service (Postgres schema ``auth``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.orm import TYPE_ANNOTATION_MAP, IdMixin, TimestampMixin, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("auth")
    type_annotation_map = TYPE_ANNOTATION_MAP


def _now_col() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"

    # always stored lower-cased; unique. None for accounts made by a sign-in that gives no
    # address (WeChat, WeCom)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email_verified_at: Mapped[datetime | None]
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    personal_org_id: Mapped[uuid.UUID | None]
    # TOTP: secret encrypted at rest; enabled once the first code was verified
    totp_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_enabled_at: Mapped[datetime | None]
    # last accepted time step, so one code cannot be replayed
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    # sha256 hex of each unused recovery code
    recovery_code_hashes: Mapped[list[str]] = mapped_column(JSONB, default=list)
    password_changed_at: Mapped[datetime | None]


class Organization(IdMixin, TimestampMixin, Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(String(200))
    personal: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[uuid.UUID | None]


class Membership(IdMixin, TimestampMixin, Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("org_id", "user_id"),)

    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))


class AuthSession(IdMixin, Base):
    """One login on one device; its refresh tokens form one family."""

    __tablename__ = "sessions"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # the organization the session's tokens carry
    org_id: Mapped[uuid.UUID]
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now_col()
    last_seen_at: Mapped[datetime] = _now_col()
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class RefreshToken(IdMixin, Base):
    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # the family is the session: reuse of a rotated token revokes both
    family_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID]
    created_at: Mapped[datetime] = _now_col()
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class SigningKey(IdMixin, Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), unique=True)
    algorithm: Mapped[str] = mapped_column(String(16), default="EdDSA")
    # raw 32-byte Ed25519 public key; private key encrypted (Fernet) with key_encryption_secret
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    private_key_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # active (signs), retiring (verifies until retire_after), retired
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = _now_col()
    retiring_at: Mapped[datetime | None]
    retire_after: Mapped[datetime | None]


class ApiKey(IdMixin, TimestampMixin, Base):
    __tablename__ = "api_keys"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID | None]
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONB, default=list)
    expires_at: Mapped[datetime | None]
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    # spend allowed per budget period (the organization's billing month), enforced by the llm
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditEvent(IdMixin, Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_org_id_created_at", "org_id", "created_at"),)

    org_id: Mapped[uuid.UUID | None]
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    actor_key_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(320))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # the application's clock: events of one transaction keep their order
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        default=lambda: datetime.now(UTC),
        server_default=func.now(),
        nullable=False,
    )


class Invite(IdMixin, Base):
    __tablename__ = "invites"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = _now_col()
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    accepted_by: Mapped[uuid.UUID | None]
    revoked_at: Mapped[datetime | None]


class OneTimeToken(IdMixin, Base):
    """Email verification and password reset tokens: hashed, single use, expiring."""

    __tablename__ = "one_time_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now_col()
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class FeatureFlag(IdMixin, TimestampMixin, Base):
    __tablename__ = "feature_flags"

    key: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # share of organizations (0-100, hashed on org id) that get the flag when enabled
    rollout_percentage: Mapped[int] = mapped_column(Integer, default=100)
    # {"<org uuid>": true|false}: wins over the global setting and the rollout
    org_overrides: Mapped[dict[str, bool]] = mapped_column(JSONB, default=dict)


class Identity(IdMixin, Base):
    """An external sign-in (OIDC issuer, WeChat, WeCom) linked to a user."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("provider", "subject"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # the configured provider name (e.g. "google", "wechat")
    provider: Mapped[str] = mapped_column(String(64))
    # the provider's stable id of the person (OIDC sub, WeChat unionid/openid, WeCom userid)
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = _now_col()
    last_login_at: Mapped[datetime] = _now_col()


class PendingRevocation(Base):
    """A session revocation not yet announced in Redis (its session-revoked marker and
    message): the outbox that makes a logout during a Redis outage reach the gateways once
    Redis is back (services/auth/sessions/revocations.py). Written in the transaction that
    ends the session; deleted once announced. No foreign key: the marker must go out even if
    the session row is gone by then."""

    __tablename__ = "pending_revocations"

    session_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # when the session's last access token has expired: no marker is needed after that
    marker_expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False, index=True
    )
