"""Data access of the prompt store: prompts, versions, labels, their history and uses.

Every lookup by id also filters by organization, so an id from another tenant reads exactly
like an unknown one.
"""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, select

from libs.orm import Repository
from services.llm.models import (
    Prompt,
    PromptEvent,
    PromptLabel,
    PromptUse,
    PromptVersion,
)


class PromptRepository(Repository[Prompt]):
    model = Prompt

    async def get_for_org(
        self, org_id: uuid.UUID, prompt_id: uuid.UUID, *, lock: bool = False
    ) -> Prompt | None:
        stmt = select(Prompt).where(Prompt.id == prompt_id, Prompt.org_id == org_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def get_by_name(
        self, org_id: uuid.UUID, name: str, *, lock: bool = False
    ) -> Prompt | None:
        stmt = select(Prompt).where(Prompt.org_id == org_id, Prompt.name == name)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def page(self, org_id: uuid.UUID, limit: int, offset: int) -> list[Prompt]:
        return await self.list(
            Prompt.org_id == org_id, order_by=(Prompt.name,), limit=limit, offset=offset
        )

    # -- versions

    async def version(self, prompt_id: uuid.UUID, number: int) -> PromptVersion | None:
        stmt = select(PromptVersion).where(
            PromptVersion.prompt_id == prompt_id, PromptVersion.number == number
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def version_by_id(
        self, prompt_id: uuid.UUID, version_id: uuid.UUID
    ) -> PromptVersion | None:
        stmt = select(PromptVersion).where(
            PromptVersion.prompt_id == prompt_id, PromptVersion.id == version_id
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def versions(self, prompt_id: uuid.UUID, limit: int, offset: int) -> list[PromptVersion]:
        stmt = (
            select(PromptVersion)
            .where(PromptVersion.prompt_id == prompt_id)
            .order_by(PromptVersion.number.desc())
            .limit(limit)
            .offset(offset)
        )
        return list((await self.session.scalars(stmt)).all())

    async def versions_by_number(
        self, prompt_id: uuid.UUID, numbers: list[int]
    ) -> dict[int, PromptVersion]:
        stmt = select(PromptVersion).where(
            PromptVersion.prompt_id == prompt_id, PromptVersion.number.in_(numbers)
        )
        return {v.number: v for v in (await self.session.scalars(stmt)).all()}

    # -- labels

    async def labels(self, prompt_ids: list[uuid.UUID]) -> list[PromptLabel]:
        if not prompt_ids:
            return []
        stmt = (
            select(PromptLabel)
            .where(PromptLabel.prompt_id.in_(prompt_ids))
            .order_by(PromptLabel.name)
        )
        return list((await self.session.scalars(stmt)).all())

    async def label(self, prompt_id: uuid.UUID, name: str) -> PromptLabel | None:
        stmt = select(PromptLabel).where(
            PromptLabel.prompt_id == prompt_id, PromptLabel.name == name
        )
        return (await self.session.scalars(stmt)).one_or_none()

    # -- history

    async def add_event(self, event: PromptEvent) -> None:
        self.session.add(event)
        await self.session.flush()

    async def events(
        self, prompt_id: uuid.UUID, limit: int, offset: int, label: str | None = None
    ) -> list[PromptEvent]:
        where: list[ColumnElement[bool]] = [PromptEvent.prompt_id == prompt_id]
        if label is not None:
            where.append(PromptEvent.label == label)
        stmt = (
            select(PromptEvent)
            .where(*where)
            .order_by(PromptEvent.seq.desc())
            .limit(limit)
            .offset(offset)
        )
        return list((await self.session.scalars(stmt)).all())

    async def last_label_move(self, prompt_id: uuid.UUID, label: str) -> PromptEvent | None:
        stmt = (
            select(PromptEvent)
            .where(
                PromptEvent.prompt_id == prompt_id,
                PromptEvent.label == label,
                PromptEvent.action.in_(("label.moved", "label.deleted")),
            )
            .order_by(PromptEvent.seq.desc())
            .limit(1)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def add_use(self, use: PromptUse) -> None:
        self.session.add(use)
        await self.session.flush()
