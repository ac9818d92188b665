"""Request and response schemas of accounts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.auth.core.schemas import Body, EmailBody, NewPassword, Password, Token
from services.auth.orgs.schemas import OrgOut


class RegisterIn(EmailBody):
    password: NewPassword
    display_name: str = Field(default="", max_length=200)


class ForgotIn(EmailBody):
    pass


class ResetIn(Body):
    token: Token
    new_password: NewPassword


class ChangePasswordIn(Body):
    current_password: Password
    new_password: NewPassword


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str | None
    display_name: str
    email_verified_at: datetime | None
    totp_enabled: bool
    personal_org_id: uuid.UUID | None
    created_at: datetime


class MeOut(BaseModel):
    user: UserOut
    org: OrgOut | None
    organizations: list[OrgOut]
    session_id: uuid.UUID | None
