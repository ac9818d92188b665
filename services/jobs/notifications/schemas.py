"""Request and response schemas of the notification center."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.notify import CHANNELS, KINDS


class KindOut(BaseModel):
    name: str = Field(description="e.g. job.failed")
    description: str
    default_channels: list[Literal["in_app", "email", "digest"]] = Field(
        description="What a recipient gets unless their preferences say otherwise"
    )
    roles: list[str] = Field(
        description="Who in the organization receives it when it names no user (empty: only "
        "the user it is about)"
    )
    mandatory: bool = Field(description="Security notices: cannot be switched off")
    account: bool = Field(description="About a user's account, not an organization")
    webhook: bool = Field(description="Webhook endpoints may subscribe to it")
    payload_schema: dict[str, Any] = Field(
        description="JSON Schema of its `data` (also in the OpenAPI document's components)"
    )


class KindList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KindOut]


def kinds_out() -> list[dict[str, Any]]:
    return [
        {
            "name": k.name,
            "description": k.description,
            "default_channels": [c for c in CHANNELS if c in k.channels],
            "roles": list(k.roles),
            "mandatory": k.mandatory,
            "account": k.account,
            "webhook": k.webhook,
            "payload_schema": k.payload.model_json_schema(),
        }
        for k in KINDS.values()
    ]


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["notification"] = "notification"
    id: uuid.UUID
    kind: str = Field(description="A kind of GET /v1/notifications/kinds")
    org_id: uuid.UUID | None = Field(description="None: about your account")
    event_id: uuid.UUID = Field(description="The event it came from (one per recipient)")
    subject: dict[str, str] = Field(description="Ids of what it is about")
    data: dict[str, Any] = Field(description="The kind's payload (its payload_schema)")
    occurred_at: datetime
    created_at: datetime
    read_at: datetime | None
    archived_at: datetime | None


class NotificationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[NotificationOut]
    first_id: uuid.UUID | None
    last_id: uuid.UUID | None
    has_more: bool = Field(description="Ask again with after=last_id for the next page")


class UnreadCount(BaseModel):
    unread: int = Field(description="Unread, not archived notifications in this organization")


class MarkedAll(BaseModel):
    marked: int = Field(description="How many were marked read")
    unread: int


def add_payload_schemas(document: dict[str, Any]) -> None:
    """Each kind's payload among the document's schemas (``<Payload>``), and the kinds route
    naming them (``x-payloads``: kind -> $ref), so the OpenAPI document shows every payload."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    refs: dict[str, dict[str, str]] = {}
    for k in KINDS.values():
        schema = k.payload.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(k.payload.__name__, schema)
        refs[k.name] = {"$ref": f"#/components/schemas/{k.payload.__name__}"}
    route = document.get("paths", {}).get("/v1/notifications/kinds", {}).get("get")
    if route is not None:
        route["x-payloads"] = refs
