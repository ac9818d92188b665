"""Where preferences and users' mail settings are stored."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.jobs.notifications.models import NotificationPreference, NotificationSettings


class PreferenceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def of_user(self, user_id: uuid.UUID) -> dict[str, list[str]]:
        stmt = select(NotificationPreference).where(
            NotificationPreference.user_id == user_id, NotificationPreference.org_id.is_(None)
        )
        return {p.kind: list(p.channels) for p in await self.session.scalars(stmt)}

    async def of_org(self, org_id: uuid.UUID) -> dict[str, list[str]]:
        stmt = select(NotificationPreference).where(
            NotificationPreference.org_id == org_id, NotificationPreference.user_id.is_(None)
        )
        return {p.kind: list(p.channels) for p in await self.session.scalars(stmt)}

    async def for_kinds(
        self,
        users: Sequence[uuid.UUID],
        orgs: Sequence[uuid.UUID],
        kinds: Sequence[str],
    ) -> tuple[dict[tuple[uuid.UUID, str], list[str]], dict[tuple[uuid.UUID, str], list[str]]]:
        """Users' choices by ``(user, kind)`` (None: unset) and organizations' defaults by
        ``(org, kind)``, for the kinds of a batch of events (one query)."""
        if not kinds or not (users or orgs):
            return {}, {}
        stmt = select(
            NotificationPreference.user_id,
            NotificationPreference.org_id,
            NotificationPreference.kind,
            NotificationPreference.channels,
        ).where(
            NotificationPreference.kind.in_(list(kinds)),
            (
                NotificationPreference.org_id.is_(None)
                & NotificationPreference.user_id.in_(list(users))
            )
            | (
                NotificationPreference.user_id.is_(None)
                & NotificationPreference.org_id.in_(list(orgs))
            ),
        )
        chosen: dict[tuple[uuid.UUID, str], list[str]] = {}
        defaults: dict[tuple[uuid.UUID, str], list[str]] = {}
        for user_id, org_id, kind, channels in await self.session.execute(stmt):
            if user_id is not None:
                chosen[(user_id, kind)] = list(channels)
            elif org_id is not None:
                defaults[(org_id, kind)] = list(channels)
        return chosen, defaults

    async def set_user(self, user_id: uuid.UUID, kind: str, channels: list[str] | None) -> None:
        await self._set(user_id, None, kind, channels)

    async def set_org(self, org_id: uuid.UUID, kind: str, channels: list[str] | None) -> None:
        await self._set(None, org_id, kind, channels)

    async def _set(
        self,
        user_id: uuid.UUID | None,
        org_id: uuid.UUID | None,
        kind: str,
        channels: list[str] | None,
    ) -> None:
        P = NotificationPreference
        if user_id is not None:
            where = [P.user_id == user_id, P.org_id.is_(None), P.kind == kind]
        else:
            where = [P.org_id == org_id, P.user_id.is_(None), P.kind == kind]
        await self.session.execute(delete(P).where(*where))
        if channels is not None:
            self.session.add(P(user_id=user_id, org_id=org_id, kind=kind, channels=channels))
            await self.session.flush()

    async def settings(self, user_id: uuid.UUID) -> NotificationSettings | None:
        return await self.session.get(NotificationSettings, user_id)

    async def settings_of(
        self, users: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, NotificationSettings]:
        stmt = select(NotificationSettings).where(NotificationSettings.user_id.in_(list(users)))
        return {s.user_id: s for s in await self.session.scalars(stmt)}

    async def save_settings(
        self, user_id: uuid.UUID, digest: str | None, language: str | None
    ) -> None:
        values = {k: v for k, v in (("digest", digest), ("language", language)) if v is not None}
        stmt = insert(NotificationSettings).values(user_id=user_id, **values)
        if values:
            stmt = stmt.on_conflict_do_update(index_elements=["user_id"], set_=values)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=["user_id"])
        await self.session.execute(stmt)
