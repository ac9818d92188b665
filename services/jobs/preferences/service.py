"""Notification preferences: per user and kind, which channels (in-app, email, digest, none);
organization defaults set by admins; mandatory kinds keep their default channels whatever is
chosen. What a recipient gets: their choice, else their organization's default, else the
kind's (:func:`effective`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import BadRequest, Forbidden
from libs.identity import Principal
from libs.notify import CHANNELS, KINDS
from services.jobs.preferences.repository import PreferenceRepository
from services.jobs.preferences.schemas import Choice

DEFAULT_DIGEST = "daily"
DEFAULT_LANGUAGE = "en"
# what a digest's unsubscribe link names
DIGEST_KIND = "digest"


def effective(kind: str, chosen: list[str] | None, org_default: list[str] | None) -> set[str]:
    """The channels a recipient gets for ``kind``."""
    spec = KINDS[kind]
    picked = chosen if chosen is not None else org_default
    channels: set[str] = set(picked) if picked is not None else set(spec.channels)
    if spec.mandatory:
        channels |= set(spec.channels)
    if not spec.inbox:
        return set()
    return channels


def _ordered(channels: set[str]) -> list[str]:
    return [c for c in CHANNELS if c in channels]


def normalize(kind: str, choice: Choice) -> list[str] | None:
    """A choice checked (400 when it cannot be), in the catalogue's channel order."""
    spec = KINDS.get(kind)
    if spec is None or not spec.inbox:
        raise BadRequest(
            f"{kind!r} is not a kind with preferences: see GET /v1/notifications/kinds",
            code="unknown_kind",
        )
    if choice is None:
        return None
    picked = set(choice) - {"none"}
    if "none" in choice and picked:
        raise BadRequest(f"{kind}: 'none' goes alone", code="invalid_channels")
    if {"email", "digest"} <= picked:
        raise BadRequest(f"{kind}: email or digest, not both", code="invalid_channels")
    if spec.mandatory and not set(spec.channels) <= picked:
        raise BadRequest(
            f"{kind} is a security notice: {sorted(spec.channels)} cannot be switched off",
            code="mandatory_kind",
        )
    return [c for c in CHANNELS if c in picked]


class PreferenceService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.repo = PreferenceRepository(session)
        self.principal = principal

    @property
    def user_id(self) -> uuid.UUID:
        if self.principal.user_id is None:
            raise Forbidden("Preferences belong to a user", code="user_required")
        return self.principal.user_id

    async def view(self) -> dict[str, Any]:
        user_id = self.user_id
        mine = await self.repo.of_user(user_id)
        org = await self.repo.of_org(self.principal.org_id) if self.principal.org_id else {}
        settings = await self.repo.settings(user_id)
        kinds = []
        for k in KINDS.values():
            if not k.inbox:
                continue
            kinds.append(
                {
                    "kind": k.name,
                    "channels": [
                        c
                        for c in CHANNELS
                        if c in effective(k.name, mine.get(k.name), org.get(k.name))
                    ],
                    "default_channels": [c for c in CHANNELS if c in k.channels],
                    "organization_channels": org.get(k.name),
                    "customized": k.name in mine,
                    "mandatory": k.mandatory,
                }
            )
        return {
            "digest": settings.digest if settings else DEFAULT_DIGEST,
            "language": settings.language if settings else DEFAULT_LANGUAGE,
            "kinds": kinds,
        }

    async def update(
        self, kinds: dict[str, Choice], digest: str | None, language: str | None
    ) -> dict[str, Any]:
        user_id = self.user_id
        checked = {k: normalize(k, c) for k, c in kinds.items()}
        for kind, channels in checked.items():
            await self.repo.set_user(user_id, kind, channels)
        await self.repo.save_settings(user_id, digest, language)
        return await self.view()

    async def org_view(self) -> dict[str, Any]:
        return {"kinds": await self.repo.of_org(self.principal.require_org())}

    async def org_update(self, kinds: dict[str, Choice]) -> dict[str, Any]:
        org_id = self.principal.require_org()
        checked = {k: normalize(k, c) for k, c in kinds.items()}
        for kind, channels in checked.items():
            await self.repo.set_org(org_id, kind, channels)
        return await self.org_view()


async def unsubscribe(session: AsyncSession, user_id: uuid.UUID, kind: str) -> None:
    """No more mails of ``kind`` for the user (in-app stays as it was); 400 for a security
    notice."""
    repo = PreferenceRepository(session)
    mine = await repo.of_user(user_id)
    if kind == DIGEST_KIND:  # a digest's link: no more digests of any kind
        kinds = [k for k in KINDS if "digest" in effective(k, mine.get(k), None)]
    else:
        spec = KINDS.get(kind)
        if spec is None or spec.mandatory:
            raise BadRequest(f"{kind!r} mails cannot be unsubscribed from", code="mandatory_kind")
        kinds = [kind]
    for k in kinds:
        if KINDS[k].mandatory:
            continue
        current = effective(k, mine.get(k), None)
        await repo.set_user(user_id, k, ["in_app"] if "in_app" in current else [])
