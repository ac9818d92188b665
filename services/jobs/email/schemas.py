"""Response schemas of the unsubscribe routes."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Unsubscribed(BaseModel):
    unsubscribed: str = Field(description="The kind no longer mailed (digest: every digest)")
