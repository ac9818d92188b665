"""Request and response schemas of notification preferences."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ChannelName = Literal["in_app", "email", "digest"]
ChannelChoice = Literal["in_app", "email", "digest", "none"]
Digest = Literal["hourly", "daily"]
Language = Literal["en", "zh"]


class KindPreference(BaseModel):
    kind: str
    channels: list[ChannelName] = Field(description="What you get (empty: nothing)")
    default_channels: list[ChannelName] = Field(description="The kind's own default")
    organization_channels: list[ChannelName] | None = Field(
        description="This organization's default for its members, if its admins set one"
    )
    customized: bool = Field(description="Whether you chose (PUT) rather than a default")
    mandatory: bool = Field(description="Security notices: the default channels always apply")


class PreferencesOut(BaseModel):
    digest: Digest = Field(description="How often digest mails come")
    language: Language = Field(description="The language of mails")
    kinds: list[KindPreference]


Choice = list[ChannelChoice] | None


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    digest: Digest | None = None
    language: Language | None = None
    kinds: dict[str, Choice] = Field(
        default_factory=dict,
        max_length=100,
        description='Per kind: channels (["none"] or []: nothing; "email" and "digest" exclude '
        "each other), or null to go back to the default",
    )


class OrgPreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: dict[str, Choice] = Field(
        default_factory=dict, max_length=100, description="Per kind: channels, or null to unset"
    )


class OrgPreferencesOut(BaseModel):
    kinds: dict[str, list[ChannelName]] = Field(description="The organization's defaults set")
