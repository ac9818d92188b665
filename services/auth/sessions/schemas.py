"""Request and response schemas of sessions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.auth.core.schemas import Body, Code, EmailBody, Password, Token


class LoginIn(EmailBody):
    password: Password
    totp_code: Code | None = None
    recovery_code: Code | None = None
    # organization the tokens should carry (default: the personal one)
    org_id: uuid.UUID | None = None


class RefreshIn(Body):
    refresh_token: Token


class SwitchOrgIn(Body):
    org_id: uuid.UUID


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_expires_in: int
    session_id: uuid.UUID
    org_id: uuid.UUID


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
