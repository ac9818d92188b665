"""Routes of webhook endpoints: ``/v1/notifications/webhooks`` (organization admins)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from libs.redis import RedisDep
from services.jobs.state import JobsState
from services.jobs.webhooks.schemas import (
    AttemptList,
    EndpointCreate,
    EndpointList,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    MessageList,
    MessageOut,
    Rotate,
)
from services.jobs.webhooks.service import WebhookService

router = APIRouter(prefix="/v1/notifications/webhooks", tags=["webhooks"])
ADMIN = [require_scope(Scope.ADMIN)]


async def get_webhook_service(
    request: Request, session: SessionDep, redis: RedisDep, principal: PrincipalDep
) -> WebhookService:
    settings = JobsState.of(request).settings
    return WebhookService(session, principal, redis, allow_private=settings.private_webhooks)


WebhookServiceDep = Annotated[WebhookService, Depends(get_webhook_service)]


def _with_secret(endpoint: object) -> dict[str, object]:
    out = EndpointOut.model_validate(endpoint).model_dump()
    return {**out, "secret": endpoint.secret}  # type: ignore[attr-defined]


@router.post(
    "",
    status_code=201,
    response_model=EndpointWithSecret,
    summary="Register a webhook endpoint (its signing secret is in the answer)",
    dependencies=ADMIN,
)
async def create_endpoint(body: EndpointCreate, service: WebhookServiceDep) -> object:
    return _with_secret(await service.create(body))


@router.get("", response_model=EndpointList, summary="Webhook endpoints", dependencies=ADMIN)
async def list_endpoints(service: WebhookServiceDep) -> object:
    return {"object": "list", "data": await service.list_endpoints()}


@router.get(
    "/{endpoint_id}",
    response_model=EndpointWithSecret,
    summary="One webhook endpoint, with its secret",
    dependencies=ADMIN,
)
async def get_endpoint(endpoint_id: uuid.UUID, service: WebhookServiceDep) -> object:
    return _with_secret(await service.get(endpoint_id))


@router.patch(
    "/{endpoint_id}",
    response_model=EndpointOut,
    summary="Change an endpoint's URL, kinds or description",
    dependencies=ADMIN,
)
async def update_endpoint(
    endpoint_id: uuid.UUID, body: EndpointUpdate, service: WebhookServiceDep
) -> object:
    return await service.update(endpoint_id, body)


@router.delete(
    "/{endpoint_id}", status_code=204, summary="Delete a webhook endpoint", dependencies=ADMIN
)
async def delete_endpoint(endpoint_id: uuid.UUID, service: WebhookServiceDep) -> Response:
    await service.delete(endpoint_id)
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/enable",
    response_model=EndpointOut,
    summary="Enable an endpoint disabled after failing",
    dependencies=ADMIN,
)
async def enable_endpoint(endpoint_id: uuid.UUID, service: WebhookServiceDep) -> object:
    return await service.enable(endpoint_id)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    summary="A new signing secret; the previous one stays valid for the grace period",
    dependencies=ADMIN,
)
async def rotate_secret(endpoint_id: uuid.UUID, body: Rotate, service: WebhookServiceDep) -> object:
    return _with_secret(await service.rotate(endpoint_id, body.grace_hours))


@router.post(
    "/{endpoint_id}/test",
    status_code=202,
    response_model=MessageOut,
    summary="Send a webhook.test event to the endpoint",
    dependencies=ADMIN,
)
async def send_test(endpoint_id: uuid.UUID, service: WebhookServiceDep) -> object:
    return await service.send_test(endpoint_id)


@router.get(
    "/{endpoint_id}/messages",
    response_model=MessageList,
    summary="Messages sent (or being sent) to the endpoint, newest first",
    dependencies=ADMIN,
)
async def list_messages(
    endpoint_id: uuid.UUID,
    service: WebhookServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> object:
    rows, has_more = await service.messages(endpoint_id, limit, offset)
    return {"object": "list", "data": rows, "has_more": has_more}


@router.get(
    "/{endpoint_id}/messages/{message_id}/attempts",
    response_model=AttemptList,
    summary="Each try of a message: status, latency, the answer's start",
    dependencies=ADMIN,
)
async def list_attempts(
    endpoint_id: uuid.UUID, message_id: uuid.UUID, service: WebhookServiceDep
) -> object:
    return {"object": "list", "data": await service.attempts(endpoint_id, message_id)}


@router.post(
    "/{endpoint_id}/messages/{message_id}/replay",
    status_code=202,
    response_model=MessageOut,
    summary="Send a message once more now",
    dependencies=ADMIN,
)
async def replay_message(
    endpoint_id: uuid.UUID, message_id: uuid.UUID, service: WebhookServiceDep
) -> object:
    return await service.replay(endpoint_id, message_id)
