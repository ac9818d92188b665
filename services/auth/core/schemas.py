"""Request-body bases and field types the features' schemas share."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

Password = Annotated[str, Field(min_length=1, max_length=256)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=512, strip_whitespace=True)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=32, strip_whitespace=True)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
# a role in answers; libs.permissions.Role where a role is asked for
RoleName = Literal["owner", "admin", "member", "viewer"]


# no docstrings on these models: pydantic would publish them as schema descriptions
class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmailBody(Body):
    email: EmailStr = Field(max_length=320)

    @field_validator("email")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()


class TokenIn(Body):
    token: Token
