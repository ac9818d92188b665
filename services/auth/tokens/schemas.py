"""Response schemas of the signing keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


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
