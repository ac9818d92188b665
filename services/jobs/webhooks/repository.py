"""Where webhook endpoints, messages and attempts are stored."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.jobs.notifications.models import WebhookAttempt, WebhookEndpoint, WebhookMessage


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def endpoints(self, org_id: uuid.UUID) -> list[WebhookEndpoint]:
        stmt = (
            select(WebhookEndpoint)
            .where(WebhookEndpoint.org_id == org_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
        return list((await self.session.scalars(stmt)).all())

    async def endpoints_of(self, org_ids: set[uuid.UUID]) -> list[WebhookEndpoint]:
        """The endpoints of several organizations (each organization's in creation order)."""
        if not org_ids:
            return []
        stmt = (
            select(WebhookEndpoint)
            .where(WebhookEndpoint.org_id.in_(list(org_ids)))
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
        return list((await self.session.scalars(stmt)).all())

    async def endpoint(self, org_id: uuid.UUID, eid: uuid.UUID) -> WebhookEndpoint | None:
        stmt = select(WebhookEndpoint).where(
            WebhookEndpoint.org_id == org_id, WebhookEndpoint.id == eid
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def delete_endpoint(self, endpoint: WebhookEndpoint) -> None:
        for model in (WebhookAttempt, WebhookMessage):
            await self.session.execute(delete(model).where(model.endpoint_id == endpoint.id))
        await self.session.delete(endpoint)

    async def add_message(
        self, endpoint: WebhookEndpoint, event_id: uuid.UUID, kind: str, payload: dict[str, object]
    ) -> uuid.UUID | None:
        """A message of the event for the endpoint; None when it has one already."""
        stmt = (
            insert(WebhookMessage)
            .values(
                id=uuid.uuid4(),
                org_id=endpoint.org_id,
                endpoint_id=endpoint.id,
                event_id=event_id,
                kind=kind,
                payload=payload,
                status="pending",
                attempts=0,
            )
            .on_conflict_do_nothing(constraint="uq_webhook_messages_endpoint_id_event_id")
            .returning(WebhookMessage.id)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def message(
        self, endpoint_id: uuid.UUID, mid: uuid.UUID, *, lock: bool = False
    ) -> WebhookMessage | None:
        stmt = select(WebhookMessage).where(
            WebhookMessage.endpoint_id == endpoint_id, WebhookMessage.id == mid
        )
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def message_by_id(self, mid: uuid.UUID) -> WebhookMessage | None:
        stmt = select(WebhookMessage).where(WebhookMessage.id == mid).with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def endpoint_by_id(self, eid: uuid.UUID, *, lock: bool = False) -> WebhookEndpoint | None:
        stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == eid)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def messages(
        self, endpoint_id: uuid.UUID, limit: int, offset: int
    ) -> tuple[list[WebhookMessage], bool]:
        stmt = (
            select(WebhookMessage)
            .where(WebhookMessage.endpoint_id == endpoint_id)
            .order_by(WebhookMessage.created_at.desc(), WebhookMessage.id)
            .limit(limit + 1)
            .offset(offset)
        )
        rows = list((await self.session.scalars(stmt)).all())
        return rows[:limit], len(rows) > limit

    async def attempts(self, mid: uuid.UUID) -> list[WebhookAttempt]:
        stmt = (
            select(WebhookAttempt)
            .where(WebhookAttempt.message_id == mid)
            .order_by(WebhookAttempt.attempt, WebhookAttempt.created_at)
        )
        return list((await self.session.scalars(stmt)).all())
