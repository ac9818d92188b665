"""Request and response schemas of the auth service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

from libs.permissions import ALL_SCOPES, Role

Password = Annotated[str, Field(min_length=1, max_length=256)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=512, strip_whitespace=True)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=32, strip_whitespace=True)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
RoleName = Literal["owner", "admin", "member", "viewer"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Email(_In):
    email: EmailStr = Field(max_length=320)

    @field_validator("email")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()


# ---------------------------------------------------------------------------------- accounts


class RegisterIn(_Email):
    password: Password
    display_name: str = Field(default="", max_length=200)


class LoginIn(_Email):
    password: Password
    totp_code: Code | None = None
    recovery_code: Code | None = None
    # organization the tokens should carry (default: the personal one)
    org_id: uuid.UUID | None = None


class RefreshIn(_In):
    refresh_token: Token


class TokenIn(_In):
    token: Token


class ForgotIn(_Email):
    pass


class ResetIn(_In):
    token: Token
    new_password: Password


class ChangePasswordIn(_In):
    current_password: Password
    new_password: Password


class SwitchOrgIn(_In):
    org_id: uuid.UUID


class TotpCodeIn(_In):
    code: Code


class TotpDisableIn(_In):
    password: Password
    code: Code


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_expires_in: int
    session_id: uuid.UUID
    org_id: uuid.UUID


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str | None
    display_name: str
    email_verified_at: datetime | None
    totp_enabled: bool
    personal_org_id: uuid.UUID | None
    created_at: datetime


class OrgOut(BaseModel):
    id: uuid.UUID
    name: str
    personal: bool
    role: RoleName
    created_at: datetime


class MeOut(BaseModel):
    user: UserOut
    org: OrgOut | None
    organizations: list[OrgOut]
    session_id: uuid.UUID | None


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    org_id: uuid.UUID
    user_agent: str
    ip: str | None
    created_at: datetime
    last_seen_at: datetime
    current: bool = False


class SessionList(BaseModel):
    data: list[SessionOut]


class TotpEnrollOut(BaseModel):
    secret: str
    otpauth_uri: str


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


# ------------------------------------------------------------------------------------- orgs


class OrgCreate(_In):
    name: Name


class OrgList(BaseModel):
    data: list[OrgOut]


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str | None
    display_name: str
    role: RoleName
    joined_at: datetime


class MemberList(BaseModel):
    data: list[MemberOut]
    has_more: bool


class RoleChange(_In):
    role: Role


class InviteCreate(_Email):
    role: Role = Role.MEMBER


class InviteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    org_id: uuid.UUID
    email: str
    role: RoleName
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    org_id: uuid.UUID | None
    actor_user_id: uuid.UUID | None
    actor_key_id: uuid.UUID | None
    action: str
    target_type: str | None
    target_id: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, object]
    created_at: datetime


class AuditList(BaseModel):
    data: list[AuditOut]
    has_more: bool


# --------------------------------------------------------------------------------- api keys


class ApiKeyCreate(_In):
    name: Name
    scopes: list[str] = Field(min_length=1, max_length=len(ALL_SCOPES))
    expires_at: datetime | None = None
    rpm_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=1_000_000_000)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - ALL_SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(unknown)}")
        return sorted(set(v))

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2030-01-01T00:00:00Z)")
        return v


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID | None
    name: str
    prefix: str
    scopes: list[str]
    expires_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    # the full key, shown once
    key: str


class ApiKeyList(BaseModel):
    data: list[ApiKeyOut]
    has_more: bool


class IntrospectIn(_In):
    key: str = Field(max_length=512)


class IntrospectOut(BaseModel):
    active: bool
    key_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    scopes: list[str] | None = None
    expires_at: datetime | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    plan: str | None = None


# ---------------------------------------------------------------------------- flags and keys

FlagKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,99}$")]


class FlagIn(_In):
    enabled: bool
    description: str = Field(default="", max_length=2000)
    rollout_percentage: int = Field(default=100, ge=0, le=100)
    org_overrides: dict[uuid.UUID, bool] = Field(default_factory=dict, max_length=10_000)


class FlagOut(BaseModel):
    key: str
    description: str
    enabled: bool
    rollout_percentage: int
    org_overrides: dict[str, bool]
    updated_at: datetime


class FlagList(BaseModel):
    data: list[FlagOut]


class EvaluatedFlags(BaseModel):
    org_id: uuid.UUID
    flags: dict[str, bool]


class SigningKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kid: str
    algorithm: str
    status: str
    created_at: datetime
    retiring_at: datetime | None
    retire_after: datetime | None


class SigningKeyList(BaseModel):
    data: list[SigningKeyOut]
