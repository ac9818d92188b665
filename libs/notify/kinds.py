"""The one catalogue of notification kinds: what any service may emit, and its payload.

Every kind names its payload (a pydantic model: what the in-app item, the mail template and the
webhook body carry as ``data``), who receives it when the event names no user (``roles``), the
channels a recipient gets unless preferences say otherwise, and whether it may be switched off.
The jobs service lists it at ``GET /v1/notifications/kinds`` and its OpenAPI document shows each
payload. Add kinds and add optional payload fields; never rename or remove (receivers of
webhooks depend on them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.permissions import Role

Channel = Literal["in_app", "email", "digest"]
CHANNELS: tuple[Channel, ...] = ("in_app", "email", "digest")
ADMINS: tuple[str, ...] = (Role.OWNER.value, Role.ADMIN.value)
EVERYONE: tuple[str, ...] = tuple(r.value for r in Role)


class Payload(BaseModel):
    """Base of every kind's payload: extra fields are refused, so a typo fails at the producer."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------- payloads


class JobOutcome(Payload):
    """A background job reached its end."""

    job_id: str = Field(max_length=255)
    service: str = Field(max_length=64, description="The service whose worker ran it")
    function: str = Field(max_length=200, description="The job type")
    status: Literal["succeeded", "failed", "cancelled", "dead"]
    error: str | None = Field(default=None, max_length=2000)
    finished_at: datetime | None = None


class BatchOutcome(Payload):
    """A Batch API batch reached its end."""

    batch_id: str = Field(max_length=255)
    status: Literal["completed", "failed", "expired", "cancelled"]
    total: int = Field(default=0, ge=0)
    completed: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)


class FileIngestFailed(Payload):
    """A file added to a vector store could not be ingested."""

    vector_store_id: str = Field(max_length=255)
    file_id: str = Field(max_length=255)
    filename: str | None = Field(default=None, max_length=512)
    error_code: str = Field(max_length=64)
    error_message: str = Field(default="", max_length=2000)


class ApiKeyExpiring(Payload):
    """An API key expires soon."""

    api_key_id: uuid.UUID
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16, description="The key's first characters, as listed")
    expires_at: datetime


class NewSignIn(Payload):
    """A sign-in from a device the account had not used before."""

    session_id: uuid.UUID
    user_agent: str = Field(default="", max_length=512)
    ip: str | None = Field(default=None, max_length=64)
    signed_in_at: datetime


class MemberInvited(Payload):
    """Someone was invited to the organization."""

    invite_id: uuid.UUID
    email: str = Field(max_length=320)
    role: str = Field(max_length=16)
    invited_by: uuid.UUID | None = None


class MemberJoined(Payload):
    """Someone joined the organization (an invitation accepted)."""

    user_id: uuid.UUID
    email: str | None = Field(default=None, max_length=320)
    role: str = Field(max_length=16)


class MemberRemoved(Payload):
    """A member left or was removed from the organization."""

    user_id: uuid.UUID
    email: str | None = Field(default=None, max_length=320)
    removed_by: uuid.UUID | None = None


class RoleChanged(Payload):
    """A member's role in the organization changed."""

    user_id: uuid.UUID
    old_role: str = Field(max_length=16)
    new_role: str = Field(max_length=16)
    changed_by: uuid.UUID | None = None


class BudgetThreshold(Payload):
    """The organization's spending reached a share of its budget (billing)."""

    budget_id: str | None = Field(default=None, max_length=255)
    threshold_percent: int = Field(ge=0, le=1000)
    spent_usd: str = Field(max_length=32, description="A decimal number, exact")
    limit_usd: str = Field(max_length=32, description="A decimal number, exact")
    period: str = Field(default="month", max_length=32)


class PaymentFailed(Payload):
    """A payment of the organization failed (billing)."""

    invoice_id: str = Field(max_length=255)
    amount_due: str = Field(max_length=32, description="A decimal number, exact")
    currency: str = Field(max_length=8)
    attempt_count: int = Field(default=1, ge=0)
    next_attempt_at: datetime | None = None


class EndpointDisabled(Payload):
    """A webhook endpoint was disabled after failing for days."""

    endpoint_id: uuid.UUID
    url: str = Field(max_length=2048)
    failing_since: datetime | None = None
    reason: str = Field(default="failing", max_length=64)


class WebhookTest(Payload):
    """A test event sent to one webhook endpoint on request."""

    endpoint_id: uuid.UUID
    message: str = Field(default="", max_length=500)


# ----------------------------------------------------------------------------------- kinds


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of notification.

    ``roles``: who receives an event that names no user (an organization's members with one of
    these roles); empty: only the user the event names. ``channels``: what a recipient gets
    unless preferences say otherwise. ``mandatory``: those channels cannot be switched off
    (security notices). ``account``: about a user's account, not an organization (shown in
    every organization, never sent to webhooks). ``webhook``: organizations' endpoints may
    subscribe to it. ``membership``: changes who belongs to an organization (recipients are
    looked up afresh). ``inbox``: shown in the in-app center and mailed (False: webhooks only).
    """

    name: str
    description: str
    payload: type[Payload]
    channels: frozenset[Channel] = frozenset({"in_app"})
    roles: tuple[str, ...] = ()
    mandatory: bool = False
    account: bool = False
    webhook: bool = True
    membership: bool = False
    inbox: bool = True


def _kinds(*kinds: Kind) -> dict[str, Kind]:
    return {k.name: k for k in kinds}


IN_APP: frozenset[Channel] = frozenset({"in_app"})
IN_APP_EMAIL: frozenset[Channel] = frozenset({"in_app", "email"})

KINDS: dict[str, Kind] = _kinds(
    Kind(
        "job.succeeded",
        "A job you started finished successfully.",
        JobOutcome,
        IN_APP,
    ),
    Kind(
        "job.failed",
        "A job you started failed (or was cancelled, or ran out of tries).",
        JobOutcome,
        IN_APP_EMAIL,
    ),
    Kind(
        "batch.completed",
        "A batch you started completed.",
        BatchOutcome,
        IN_APP_EMAIL,
    ),
    Kind(
        "batch.failed",
        "A batch you started failed, expired or was cancelled.",
        BatchOutcome,
        IN_APP_EMAIL,
    ),
    Kind(
        "vector_store.file.failed",
        "A file added to a vector store could not be ingested (to whoever added it; to the"
        " organization's admins when no user did).",
        FileIngestFailed,
        IN_APP_EMAIL,
        roles=ADMINS,
    ),
    Kind(
        "api_key.expiring",
        "An API key expires within 7 days (to whoever created it; to the admins when that"
        " person is gone).",
        ApiKeyExpiring,
        IN_APP_EMAIL,
        roles=ADMINS,
    ),
    Kind(
        "security.new_sign_in",
        "Your account was signed in to from a new device.",
        NewSignIn,
        IN_APP_EMAIL,
        mandatory=True,
        account=True,
        webhook=False,
    ),
    Kind(
        "org.member.invited",
        "Someone was invited to the organization.",
        MemberInvited,
        IN_APP,
        roles=ADMINS,
    ),
    Kind(
        "org.member.joined",
        "Someone joined the organization.",
        MemberJoined,
        IN_APP,
        roles=ADMINS,
        membership=True,
    ),
    Kind(
        "org.member.removed",
        "A member left or was removed from the organization.",
        MemberRemoved,
        IN_APP,
        roles=ADMINS,
        membership=True,
    ),
    Kind(
        "org.member.role_changed",
        "Your role in the organization changed.",
        RoleChanged,
        IN_APP_EMAIL,
        membership=True,
    ),
    Kind(
        "billing.budget_threshold",
        "The organization's spending reached a share of its budget.",
        BudgetThreshold,
        IN_APP_EMAIL,
        roles=ADMINS,
    ),
    Kind(
        "billing.payment_failed",
        "A payment of the organization failed.",
        PaymentFailed,
        IN_APP_EMAIL,
        roles=ADMINS,
        mandatory=True,
    ),
    Kind(
        "webhook.endpoint_disabled",
        "A webhook endpoint was disabled after failing for days.",
        EndpointDisabled,
        IN_APP_EMAIL,
        roles=ADMINS,
        mandatory=True,
    ),
    Kind(
        "webhook.test",
        "A test event, sent to one endpoint on request (never shown in-app or mailed).",
        WebhookTest,
        frozenset(),
        inbox=False,
    ),
)


def kind(name: str) -> Kind:
    """The catalogue's kind ``name``; KeyError for an unknown one."""
    return KINDS[name]
