"""Request and response schemas of organizations."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from libs.permissions import Role
from services.auth.core.schemas import Body, EmailBody, Name, RoleName


class OrgCreate(Body):
    name: Name


class OrgOut(BaseModel):
    id: uuid.UUID
    name: str
    personal: bool
    role: RoleName
    created_at: datetime


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


class RoleChange(Body):
    role: Role


class InviteCreate(EmailBody):
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
