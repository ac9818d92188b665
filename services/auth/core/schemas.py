"""Request-body bases and field types the features' schemas share."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

Password = Annotated[str, Field(min_length=1, max_length=256)]
# a password being chosen: the service's policy, published (AUTH_PASSWORD_MIN_LENGTH is never
# under 8; the policy itself is checked by the service, with its 422 weak_password)
NewPassword = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        json_schema_extra={"minLength": 8},
        examples=["correct horse battery staple"],
        description="At least AUTH_PASSWORD_MIN_LENGTH characters (10 by default, never under "
        "8), at least 4 different characters, not a common password nor the account's email "
        "(else 422 weak_password)",
    ),
]
Token = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512, strip_whitespace=True),
    Field(description="The token from the email's link (else 400 invalid_token)"),
]
Code = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32, strip_whitespace=True),
    Field(
        description="The 6 digits the authenticator app shows, or an unused recovery code "
        "(else 400)",
        examples=["123456"],
    ),
]
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
