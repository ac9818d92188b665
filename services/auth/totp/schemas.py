"""Request and response schemas of TOTP."""

from __future__ import annotations

from pydantic import BaseModel

from services.auth.core.schemas import Body, Code, Password


class TotpCodeIn(Body):
    code: Code


class TotpDisableIn(Body):
    password: Password
    code: Code


class TotpEnrollOut(BaseModel):
    secret: str
    otpauth_uri: str


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]
