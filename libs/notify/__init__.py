"""Notifications: the one way any service tells people and programs that something happened.

- **Kinds** are declared in one catalogue (:mod:`libs.notify.kinds`): name, description, payload
  model, default channels, the roles that receive it, whether it can be switched off.
- **Emit** inside the transaction that made the event true (:func:`emit`): the event is
  enqueued on the jobs service's queue once it commits, idempotent by event id (``key=``
  derives the id from the fact). :func:`emit_now` for callers without a transaction.
- **The jobs service** turns each event into in-app items (members with the right role, only
  while they belong to the organization), mails and signed webhook deliveries.
"""

from __future__ import annotations

from libs.notify.emit import (
    FUNCTION,
    SERVICE,
    Event,
    emit,
    emit_event,
    emit_now,
    event_id_for,
    job_id_for,
    make_event,
)
from libs.notify.kinds import (
    ADMINS,
    CHANNELS,
    KINDS,
    ApiKeyExpiring,
    BatchOutcome,
    BudgetThreshold,
    Channel,
    EndpointDisabled,
    FileIngestFailed,
    JobOutcome,
    Kind,
    MemberInvited,
    MemberJoined,
    MemberRemoved,
    NewSignIn,
    Payload,
    PaymentFailed,
    RoleChanged,
    WebhookTest,
    kind,
)

__all__ = [
    "ADMINS",
    "CHANNELS",
    "FUNCTION",
    "KINDS",
    "SERVICE",
    "ApiKeyExpiring",
    "BatchOutcome",
    "BudgetThreshold",
    "Channel",
    "EndpointDisabled",
    "Event",
    "FileIngestFailed",
    "JobOutcome",
    "Kind",
    "MemberInvited",
    "MemberJoined",
    "MemberRemoved",
    "NewSignIn",
    "Payload",
    "PaymentFailed",
    "RoleChanged",
    "WebhookTest",
    "emit",
    "emit_event",
    "emit_now",
    "event_id_for",
    "job_id_for",
    "kind",
    "make_event",
]
