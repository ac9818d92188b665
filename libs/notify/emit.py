"""Emitting notification events: a job on the jobs service's queue, after the commit.

A producer calls :func:`emit` inside the transaction that made the event true; the event is
enqueued (libs/queue's after-commit hook) as the jobs service's ``deliver_notification`` job
once that transaction commits, and dropped when it rolls back. The job id is derived from the
event id (``notify-<id>``), so emitting the same event twice while the first is queued, running
or recently done is a no-op, and the jobs service keeps one record per event id, so a duplicate
arriving later still makes no second notification, mail or webhook.

Give events that may be emitted again for the same fact (a periodic check, a retried job) a
``key``: the id is derived from the kind and the key, so the second emission is the same event.
Callers without a transaction (a job, a loop) use :func:`emit_now`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from libs.context import get_request_id
from libs.notify.kinds import KINDS, Payload
from libs.queue import enqueue, enqueue_prepared, prepare_job

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

# the jobs service's job that turns an event into notifications, mails and webhook messages
SERVICE = "jobs"
FUNCTION = "deliver_notification"
# ids derived from a key (kind + key): the same fact emitted twice is one event
_KEY_NAMESPACE = uuid.UUID("6f1d8e52-3a0c-4f63-9b0e-2f6a1d7c9e41")


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One notification event, as it travels on the queue."""

    id: uuid.UUID = Field(description="Unique per fact: a second event with this id is ignored")
    kind: str = Field(max_length=64)
    org_id: uuid.UUID | None = Field(
        default=None, description="The organization it is about (None: a user's account)"
    )
    user_id: uuid.UUID | None = Field(
        default=None, description="The one recipient (None: the kind's roles in the organization)"
    )
    actor_id: uuid.UUID | None = Field(
        default=None, description="Who caused it: not notified of their own action"
    )
    subject: dict[str, str] = Field(
        default_factory=dict, description="Ids of what it is about, e.g. {'job_id': ...}"
    )
    data: dict[str, Any] = Field(description="The kind's payload")
    source: str = Field(default="", max_length=64, description="The emitting service")
    occurred_at: datetime = Field(default_factory=_now)
    request_id: str | None = Field(default=None, max_length=128)


def event_id_for(kind: str, key: str) -> uuid.UUID:
    """The id of the event of ``kind`` about ``key`` (the same every time)."""
    return uuid.uuid5(_KEY_NAMESPACE, f"{kind}\x00{key}")


def job_id_for(event_id: uuid.UUID) -> str:
    """The delivery job's id: one per event (the queue drops a second enqueue of it)."""
    return f"notify-{event_id}"


def make_event(
    kind: str,
    data: Payload,
    *,
    org_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    actor_id: uuid.UUID | None = None,
    subject: Mapping[str, Any] | None = None,
    key: str | None = None,
    event_id: uuid.UUID | None = None,
    source: str = "",
    occurred_at: datetime | None = None,
) -> Event:
    """Build an event, checked against the catalogue (ValueError when it does not fit)."""
    spec = KINDS.get(kind)
    if spec is None:
        raise ValueError(f"unknown notification kind {kind!r} (libs/notify/kinds.py)")
    if not isinstance(data, spec.payload):
        raise ValueError(f"{kind} carries a {spec.payload.__name__}, not {type(data).__name__}")
    if spec.account:
        if user_id is None or org_id is not None:
            raise ValueError(f"{kind} is about an account: a user_id and no org_id")
    else:
        if org_id is None:
            raise ValueError(f"{kind} is about an organization: an org_id is required")
        if not spec.roles and user_id is None and spec.inbox:
            raise ValueError(f"{kind} goes to one user: a user_id is required")
    if event_id is None:
        event_id = event_id_for(kind, key) if key is not None else uuid.uuid4()
    return Event(
        id=event_id,
        kind=kind,
        org_id=org_id,
        user_id=user_id,
        actor_id=actor_id,
        subject={k: str(v) for k, v in (subject or {}).items()},
        data=data.model_dump(mode="json"),
        source=source,
        occurred_at=occurred_at or _now(),
        request_id=get_request_id(),
    )


def _job_kwargs(event: Event) -> dict[str, Any]:
    return {"event": event.model_dump(mode="json")}


async def emit_event(session: AsyncSession, redis: Redis, event: Event) -> None:
    """Deliver ``event`` once ``session`` commits (nothing when it rolls back)."""
    await enqueue(
        session,
        redis,
        service=SERVICE,
        function=FUNCTION,
        kwargs=_job_kwargs(event),
        job_id=job_id_for(event.id),
        org_id=event.org_id,
        user_id=event.user_id,
        internal=True,
    )


async def emit(
    session: AsyncSession,
    redis: Redis,
    kind: str,
    data: Payload,
    *,
    source: str,
    org_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    actor_id: uuid.UUID | None = None,
    subject: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> Event:
    """Emit one event once ``session`` commits (see the module docstring); returns it.
    ValueError (before anything is written) when it does not fit the catalogue."""
    event = make_event(
        kind,
        data,
        org_id=org_id,
        user_id=user_id,
        actor_id=actor_id,
        subject=subject,
        key=key,
        source=source,
    )
    await emit_event(session, redis, event)
    return event


async def emit_now(redis: Redis, events: Sequence[Event]) -> None:
    """Enqueue events now, with no transaction (a job, a loop); raises when Redis does not
    take them (a job retries)."""
    if not events:
        return
    await enqueue_prepared(
        redis,
        [
            prepare_job(
                service=SERVICE,
                function=FUNCTION,
                kwargs=_job_kwargs(ev),
                job_id=job_id_for(ev.id),
                org_id=ev.org_id,
                user_id=ev.user_id,
                internal=True,
            )
            for ev in events
        ],
    )
