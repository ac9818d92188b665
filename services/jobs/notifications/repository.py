"""Where notifications are stored: events received once, users' notifications."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.notify import Event
from services.jobs.notifications.models import Notification, NotificationEvent


def visible_to(user_id: uuid.UUID, org_id: uuid.UUID | None) -> ColumnElement[bool]:
    """A user's notifications in the organization they act in, and about their account."""
    return and_(
        Notification.user_id == user_id,
        or_(Notification.org_id == org_id, Notification.org_id.is_(None)),
    )


_N = Notification.__table__.fullname  # type: ignore[attr-defined]
_E = NotificationEvent.__table__.fullname  # type: ignore[attr-defined]
# one row per (id, user, event) of the arrays; the rest copied from the event's record
_ADD_MANY_SQL = f"""
    WITH added AS (
        INSERT INTO {_N} (id, user_id, org_id, event_id, kind, subject, data, occurred_at)
        SELECT n.id, n.user_id, e.org_id, e.id, e.kind, e.subject, e.data, e.occurred_at
        FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS uuid[]), CAST(:events AS uuid[]))
            AS n(id, user_id, event_id), {_E} AS e
        WHERE e.id = n.event_id
        ON CONFLICT ON CONSTRAINT uq_notifications_event_id_user_id DO NOTHING
        RETURNING event_id
    )
    SELECT event_id, count(*), now() FROM added GROUP BY event_id
"""  # noqa: S608 - the table names are the models'
_ADD_MANY = text(_ADD_MANY_SQL).bindparams(
    bindparam("ids"), bindparam("users"), bindparam("events")
)


class NotificationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record_events(self, events: Sequence[tuple[Event, int]]) -> set[uuid.UUID]:
        """Keep events with how many users they reach in-app; the ids of those new (the others
        were kept already: duplicate deliveries)."""
        if not events:
            return set()
        rows = [
            {
                "id": ev.id,
                "kind": ev.kind,
                "org_id": ev.org_id,
                "user_id": ev.user_id,
                "actor_id": ev.actor_id,
                "subject": ev.subject,
                "data": ev.data,
                "source": ev.source,
                "occurred_at": ev.occurred_at,
                "recipients": recipients,
            }
            for ev, recipients in events
        ]
        stmt = (
            insert(NotificationEvent)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(NotificationEvent.id)
        )
        return set((await self.session.scalars(stmt, rows)).all())

    async def add_many(
        self, groups: Sequence[tuple[Sequence[str], Sequence[str], uuid.UUID]]
    ) -> tuple[dict[uuid.UUID, int], datetime]:
        """Per recorded event, its notifications' ids and their users' ids (as text), in one
        statement that copies each event's fields from its record (none twice per user and
        event); how many each event got, and their ``created_at``."""
        ids: list[str] = []
        users: list[str] = []
        events: list[uuid.UUID] = []
        for nids, uids, event_id in groups:
            ids += nids
            users += uids
            events += [event_id] * len(nids)
        counts: dict[uuid.UUID, int] = {}
        created_at = None
        if ids:
            result = await self.session.execute(
                _ADD_MANY, {"ids": ids, "users": users, "events": events}
            )
            for event_id, n, at in result:
                counts[event_id] = int(n)
                created_at = at
        if created_at is None:
            created_at = (await self.session.execute(select(func.now()))).scalar_one()
        return counts, created_at

    async def get(
        self, user_id: uuid.UUID, org_id: uuid.UUID | None, nid: uuid.UUID
    ) -> Notification | None:
        stmt = select(Notification).where(visible_to(user_id, org_id), Notification.id == nid)
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(
        self,
        user_id: uuid.UUID,
        org_id: uuid.UUID | None,
        *,
        limit: int,
        after_seq: int | None,
        unread: bool | None,
        kinds: list[str],
        archived: bool,
    ) -> tuple[list[Notification], bool]:
        """Newest first; ``after_seq``: the page after that notification."""
        stmt = select(Notification).where(visible_to(user_id, org_id))
        stmt = stmt.where(
            Notification.archived_at.is_not(None)
            if archived
            else Notification.archived_at.is_(None)
        )
        if unread is True:
            stmt = stmt.where(Notification.read_at.is_(None))
        elif unread is False:
            stmt = stmt.where(Notification.read_at.is_not(None))
        if kinds:
            stmt = stmt.where(Notification.kind.in_(kinds))
        if after_seq is not None:
            stmt = stmt.where(Notification.seq < after_seq)
        rows = list(
            await self.session.scalars(stmt.order_by(Notification.seq.desc()).limit(limit + 1))
        )
        return rows[:limit], len(rows) > limit

    async def unread_count(self, user_id: uuid.UUID, org_id: uuid.UUID | None) -> int:
        stmt = select(func.count()).where(
            visible_to(user_id, org_id),
            Notification.read_at.is_(None),
            Notification.archived_at.is_(None),
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def mark_read(
        self, user_id: uuid.UUID, org_id: uuid.UUID | None, now: datetime, nid: uuid.UUID | None
    ) -> int:
        """Mark one (``nid``) or all unread as read; how many changed."""
        stmt = update(Notification).where(
            visible_to(user_id, org_id), Notification.read_at.is_(None)
        )
        if nid is not None:
            stmt = stmt.where(Notification.id == nid)
        result: Any = await self.session.execute(stmt.values(read_at=now))
        return int(result.rowcount or 0)

    async def archive(
        self, user_id: uuid.UUID, org_id: uuid.UUID | None, now: datetime, nid: uuid.UUID
    ) -> None:
        await self.session.execute(
            update(Notification)
            .where(
                visible_to(user_id, org_id),
                Notification.id == nid,
                Notification.archived_at.is_(None),
            )
            .values(archived_at=now, read_at=func.coalesce(Notification.read_at, now))
        )

    async def seq_of(
        self, user_id: uuid.UUID, org_id: uuid.UUID | None, nid: uuid.UUID
    ) -> int | None:
        stmt = select(Notification.seq).where(visible_to(user_id, org_id), Notification.id == nid)
        return (await self.session.execute(stmt)).scalar_one_or_none()
