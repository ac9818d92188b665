"""Routes of the in-app notification center: ``/v1/notifications``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.redis import RedisDep
from libs.sse import SSEResponse, sse_responses
from services.jobs.notifications.inbox import inbox_events
from services.jobs.notifications.repository import NotificationRepository
from services.jobs.notifications.schemas import (
    KindList,
    MarkedAll,
    NotificationList,
    NotificationOut,
    UnreadCount,
    kinds_out,
)
from services.jobs.notifications.service import NotificationService, notification_out
from services.jobs.state import JobsState

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])

# the gateway asks jobs:read of every /v1/notifications call: marking one's own notifications
# read needs no more than reading them
READ = [require_scope(Scope.JOBS_READ)]


async def get_notification_service(
    session: SessionDep, redis: RedisDep, principal: PrincipalDep
) -> NotificationService:
    return NotificationService(session, principal, redis)


NotificationServiceDep = Annotated[NotificationService, Depends(get_notification_service)]


@router.get(
    "/kinds",
    response_model=KindList,
    summary="Every kind of notification: its payload schema, default channels, recipients",
    dependencies=READ,
)
async def list_kinds() -> object:
    return {"object": "list", "data": kinds_out()}


@router.get(
    "",
    response_model=NotificationList,
    summary="My notifications in this organization (and about my account), newest first",
    dependencies=READ,
)
async def list_notifications(
    service: NotificationServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        uuid.UUID | None, Query(description="A notification id: the page after it")
    ] = None,
    unread: Annotated[bool | None, Query(description="true: unread only; false: read")] = None,
    kind: Annotated[list[str] | None, Query(max_length=20, description="Only these kinds")] = None,
    archived: Annotated[bool, Query(description="The archived ones instead")] = False,
) -> object:
    return await service.page(
        limit=limit, after=after, unread=unread, kinds=kind or [], archived=archived
    )


@router.get(
    "/unread-count",
    response_model=UnreadCount,
    summary="How many of my notifications here are unread",
    dependencies=READ,
)
async def unread_count(service: NotificationServiceDep) -> object:
    return {"unread": await service.unread()}


@router.post(
    "/read-all",
    response_model=MarkedAll,
    summary="Mark all my notifications here read",
    dependencies=READ,
)
async def read_all(service: NotificationServiceDep) -> object:
    return await service.mark_all_read()


@router.get(
    "/events",
    summary="My notifications live, as Server-Sent Events (`notification`, `count`); the "
    "stream ends after JOBS_NOTIFICATION_STREAM_MAX_S: reconnect with `Last-Event-ID`",
    response_class=SSEResponse,
    responses=sse_responses(
        "`count` first (unread), then `notification` events (the notification) and `count` "
        "events when the unread count changes; each pushed event has an `id` for `Last-Event-ID`"
    ),
    dependencies=READ,
)
async def notification_events(
    request: Request,
    principal: PrincipalDep,
    service: NotificationServiceDep,
    redis: RedisDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> SSEResponse:
    state = JobsState.of(request)
    factory = state.db
    user_id, org_id = service.user_id, principal.org_id

    async def unread() -> int:
        async with factory() as s:
            return await NotificationRepository(s).unread_count(user_id, org_id)

    return SSEResponse(
        inbox_events(
            redis,
            user_id,
            org_id,
            unread,
            last_event_id=last_event_id,
            heartbeat_s=float(state.settings.sse_heartbeat_seconds),
            max_s=float(state.settings.notification_stream_max_s),
        )
    )


@router.get(
    "/{notification_id}",
    response_model=NotificationOut,
    summary="One of my notifications",
    dependencies=READ,
)
async def get_notification(notification_id: uuid.UUID, service: NotificationServiceDep) -> object:
    return notification_out(await service.get(notification_id))


@router.post(
    "/{notification_id}/read",
    response_model=NotificationOut,
    summary="Mark one notification read",
    dependencies=READ,
)
async def mark_read(notification_id: uuid.UUID, service: NotificationServiceDep) -> object:
    return notification_out(await service.mark_read(notification_id))


@router.post(
    "/{notification_id}/archive",
    response_model=NotificationOut,
    summary="Archive one notification (read, and out of the list)",
    dependencies=READ,
)
async def archive(notification_id: uuid.UUID, service: NotificationServiceDep) -> object:
    return notification_out(await service.archive(notification_id))
