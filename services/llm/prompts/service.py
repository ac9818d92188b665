"""The prompt store: prompts with immutable versions, movable labels, history, A/B, and the
resolution of a chat request's ``prompt`` (rendered by :mod:`.render`).

A/B: a label may point at several versions with integer weights. The choice is a hash of
(prompt id, label, key) mapped onto the weights, where the key is the caller's ``ab_key``
(sticky: the same user always gets the same version) or else the request id (a fresh,
independent draw per request that can be reproduced from the request id). With neither, the
choice is random.

Prompts are named by id or by name. With no label and no version, the ``production`` label
is used when it exists, else the newest version; ``latest`` always means the newest version.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import Conflict, NotFound, ValidationFailed
from libs.identity import Principal
from services.llm.chat.schemas import ChatCompletionRequest
from services.llm.models import Prompt, PromptEvent, PromptLabel, PromptUse, PromptVersion
from services.llm.prompts.render import check_templates, render_messages
from services.llm.prompts.repository import PromptRepository
from services.llm.prompts.schemas import (
    LabelSet,
    LabelTarget,
    PromptCreate,
    PromptVersionCreate,
)

DEFAULT_LABEL = "production"
LATEST = "latest"


def choose(
    targets: list[dict[str, Any]], key: str | None, salt: str, rng: random.Random | None = None
) -> dict[str, Any]:
    """Pick one of a label's weighted targets: by hash of ``salt:key``, or randomly without key."""
    if len(targets) == 1:
        return targets[0]
    total = sum(int(t["weight"]) for t in targets)
    if key is not None:
        digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    else:
        point = (rng or random).randrange(total)
    for target in targets:
        point -= int(target["weight"])
        if point < 0:
            return target
    return targets[-1]


def check_params(params: dict[str, Any]) -> None:
    """A version's params must make a valid chat request (they become its defaults)."""
    probe = {**params, "model": "probe", "messages": [{"role": "user", "content": "probe"}]}
    try:
        ChatCompletionRequest.model_validate(probe)
    except PydanticValidationError as exc:
        raise ValidationFailed(
            "params are not valid chat completion parameters",
            code="invalid_params",
            details=[
                {
                    "field": "body.params." + ".".join(str(p) for p in err["loc"]),
                    "message": err["msg"],
                    "type": err["type"],
                }
                for err in exc.errors()
            ],
        ) from exc


# ---------------------------------------------------------------------------- resolution


@dataclass
class ResolvedPrompt:
    """A rendered prompt version, ready to be prepended to a chat request."""

    messages: list[dict[str, Any]]
    model: str | None
    params: dict[str, Any]
    prompt_id: uuid.UUID
    version_id: uuid.UUID
    version_number: int
    name: str = ""
    label: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)


def _as_uuid(value: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def find_prompt(
    repo: PromptRepository, org_id: uuid.UUID, name_or_id: str | uuid.UUID, *, lock: bool = False
) -> Prompt:
    as_id = _as_uuid(name_or_id)
    prompt = (
        await repo.get_for_org(org_id, as_id, lock=lock)
        if as_id is not None
        else await repo.get_by_name(org_id, str(name_or_id), lock=lock)
    )
    if prompt is None:
        # another organization's prompt reads exactly like an unknown one
        raise NotFound(f"Prompt '{name_or_id}' not found", code="prompt_not_found")
    return prompt


async def pick_version(
    repo: PromptRepository,
    prompt: Prompt,
    label: str | None,
    version: int | None,
    ab_key: str | None,
) -> tuple[PromptVersion, str | None]:
    """The version a (label | version | default) reference names, and the label used."""
    if version is not None and label is not None:
        raise ValidationFailed("Give a label or a version, not both", code="invalid_prompt_ref")
    if version is not None:
        found = await repo.version(prompt.id, version)
        if found is None:
            raise NotFound(
                f"Prompt '{prompt.name}' has no version {version}", code="prompt_version_not_found"
            )
        return found, None
    name = label or DEFAULT_LABEL
    row = None if name == LATEST else await repo.label(prompt.id, name)
    if row is None:
        if label is not None and label != LATEST:
            raise NotFound(
                f"Prompt '{prompt.name}' has no label '{label}'", code="prompt_label_not_found"
            )
        latest = await repo.version(prompt.id, prompt.latest_version)
        if latest is None:
            raise NotFound(f"Prompt '{prompt.name}' has no versions yet", code="prompt_empty")
        return latest, LATEST
    target = choose(row.targets, ab_key, f"{prompt.id}:{name}")
    found = await repo.version_by_id(prompt.id, uuid.UUID(target["version_id"]))
    assert found is not None  # versions are deleted only with their prompt
    return found, name


async def resolve_prompt(
    session: AsyncSession,
    org_id: uuid.UUID,
    name_or_id: str | uuid.UUID,
    label: str | None = None,
    version: int | None = None,
    variables: dict[str, Any] | None = None,
    request_id: str | None = None,
    ab_key: str | None = None,
) -> ResolvedPrompt:
    """Find a prompt of ``org_id``, pick its version (label, A/B, version) and render it.

    Raises NotFound (prompt, label or version) and ValidationFailed (variables, template)."""
    repo = PromptRepository(session)
    prompt = await find_prompt(repo, org_id, name_or_id)
    chosen, used_label = await pick_version(repo, prompt, label, version, ab_key or request_id)
    values = variables or {}
    messages = render_messages(chosen.messages, values, chosen.variables)
    return ResolvedPrompt(
        messages=messages,
        model=chosen.model,
        params=dict(chosen.params or {}),
        prompt_id=prompt.id,
        version_id=chosen.id,
        version_number=chosen.number,
        name=prompt.name,
        label=used_label,
        variables=values,
    )


async def record_prompt_use(
    session: AsyncSession,
    resolved: ResolvedPrompt,
    *,
    org_id: uuid.UUID,
    request_id: str,
    user_id: uuid.UUID | None = None,
    key_id: uuid.UUID | None = None,
    conversation_id: uuid.UUID | None = None,
) -> None:
    """Record that ``resolved``'s version served request ``request_id``."""
    await PromptRepository(session).add_use(
        PromptUse(
            org_id=org_id,
            prompt_id=resolved.prompt_id,
            version_id=resolved.version_id,
            label=resolved.label,
            request_id=request_id,
            conversation_id=conversation_id,
            user_id=user_id,
            key_id=key_id,
        )
    )


# ---------------------------------------------------------------------------- management


def _targets_json(targets: list[LabelTarget], versions: dict[int, PromptVersion]) -> list[Any]:
    return [
        {"version": t.version, "version_id": str(versions[t.version].id), "weight": t.weight}
        for t in targets
    ]


class PromptService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.session = session
        self.repo = PromptRepository(session)
        self.principal = principal
        self.org_id = principal.require_org()

    def _event(self, prompt: Prompt, action: str, **kw: Any) -> PromptEvent:
        return PromptEvent(
            prompt_id=prompt.id,
            org_id=self.org_id,
            action=action,
            actor_user=self.principal.user_id,
            actor_key=self.principal.key_id,
            **kw,
        )

    async def get(self, name_or_id: str, *, lock: bool = False) -> Prompt:
        return await find_prompt(self.repo, self.org_id, name_or_id, lock=lock)

    async def create(self, data: PromptCreate) -> Prompt:
        if await self.repo.get_by_name(self.org_id, data.name):
            raise Conflict(f"A prompt named '{data.name}' already exists", code="name_taken")
        prompt = Prompt(
            org_id=self.org_id,
            name=data.name,
            description=data.description,
            latest_version=0,
            created_by_user=self.principal.user_id,
            created_by_key=self.principal.key_id,
        )
        try:
            # a savepoint: a concurrent create of the same name must not poison the session
            async with self.session.begin_nested():
                self.session.add(prompt)
                await self.session.flush()
        except IntegrityError as exc:
            raise Conflict(
                f"A prompt named '{data.name}' already exists", code="name_taken"
            ) from exc
        await self.repo.add_event(self._event(prompt, "prompt.created", after={"name": data.name}))
        if data.version is not None:
            await self._add_version(prompt, data.version)
        return prompt

    async def update(self, name_or_id: str, description: str) -> Prompt:
        prompt = await self.get(name_or_id, lock=True)
        before = prompt.description
        prompt.description = description
        await self.repo.add_event(
            self._event(
                prompt,
                "prompt.updated",
                before={"description": before},
                after={"description": description},
            )
        )
        await self.session.refresh(prompt)
        return prompt

    async def list_page(self, limit: int, offset: int) -> tuple[list[Prompt], bool]:
        rows = await self.repo.page(self.org_id, limit + 1, offset)
        return rows[:limit], len(rows) > limit

    async def labels_of(self, prompts: list[Prompt]) -> dict[uuid.UUID, list[PromptLabel]]:
        out: dict[uuid.UUID, list[PromptLabel]] = {p.id: [] for p in prompts}
        for label in await self.repo.labels([p.id for p in prompts]):
            out[label.prompt_id].append(label)
        return out

    async def create_version(self, name_or_id: str, data: PromptVersionCreate) -> PromptVersion:
        # the row lock numbers concurrent versions of one prompt one after the other
        prompt = await self.get(name_or_id, lock=True)
        return await self._add_version(prompt, data)

    async def _add_version(self, prompt: Prompt, data: PromptVersionCreate) -> PromptVersion:
        messages = [m.model_dump(exclude_none=True) for m in data.messages]
        check_templates(messages)
        check_params(data.params)
        number = prompt.latest_version + 1
        version = PromptVersion(
            prompt_id=prompt.id,
            org_id=self.org_id,
            number=number,
            messages=messages,
            model=data.model,
            params=data.params,
            variables=data.variables.model_dump(exclude_none=True) if data.variables else None,
            commit_message=data.commit_message,
            created_by_user=self.principal.user_id,
            created_by_key=self.principal.key_id,
        )
        self.session.add(version)
        prompt.latest_version = number
        await self.session.flush()
        await self.repo.add_event(
            self._event(
                prompt,
                "version.created",
                version_id=version.id,
                after={"version": number, "commit_message": data.commit_message},
            )
        )
        for label in data.labels:
            await self._move_label(prompt, label, [LabelTarget(version=number, weight=1)])
        await self.session.refresh(prompt)
        return version

    async def versions(
        self, name_or_id: str, limit: int, offset: int
    ) -> tuple[Prompt, list[PromptVersion], bool]:
        prompt = await self.get(name_or_id)
        rows = await self.repo.versions(prompt.id, limit + 1, offset)
        return prompt, rows[:limit], len(rows) > limit

    async def version(self, name_or_id: str, number: int) -> tuple[Prompt, PromptVersion]:
        prompt = await self.get(name_or_id)
        found = await self.repo.version(prompt.id, number)
        if found is None:
            raise NotFound(
                f"Prompt '{prompt.name}' has no version {number}", code="prompt_version_not_found"
            )
        return prompt, found

    async def set_label(self, name_or_id: str, label: str, data: LabelSet) -> Prompt:
        prompt = await self.get(name_or_id, lock=True)
        await self._move_label(prompt, label, data.targets())
        await self.session.refresh(prompt)
        return prompt

    async def _move_label(self, prompt: Prompt, label: str, targets: list[LabelTarget]) -> None:
        numbers = [t.version for t in targets]
        found = await self.repo.versions_by_number(prompt.id, numbers)
        unknown = [n for n in numbers if n not in found]
        if unknown:
            raise NotFound(
                f"Prompt '{prompt.name}' has no version {unknown[0]}",
                code="prompt_version_not_found",
            )
        after = _targets_json(targets, found)
        row = await self.repo.label(prompt.id, label)
        before = row.targets if row is not None else None
        if row is None:
            row = PromptLabel(prompt_id=prompt.id, org_id=self.org_id, name=label, targets=after)
            self.session.add(row)
        else:
            row.targets = after
        await self.session.flush()
        await self.repo.add_event(
            self._event(
                prompt,
                "label.moved",
                label=label,
                version_id=found[numbers[0]].id if len(numbers) == 1 else None,
                before=before,
                after=after,
            )
        )

    async def delete_label(self, name_or_id: str, label: str) -> None:
        prompt = await self.get(name_or_id, lock=True)
        row = await self.repo.label(prompt.id, label)
        if row is None:
            raise NotFound(
                f"Prompt '{prompt.name}' has no label '{label}'", code="prompt_label_not_found"
            )
        await self.repo.add_event(
            self._event(prompt, "label.deleted", label=label, before=row.targets, after=None)
        )
        await self.session.delete(row)
        await self.session.flush()

    async def rollback_label(self, name_or_id: str, label: str) -> Prompt:
        """Point ``label`` back where it pointed before its last move (recorded as a move)."""
        prompt = await self.get(name_or_id, lock=True)
        last = await self.repo.last_label_move(prompt.id, label)
        if last is None or not last.before:
            raise Conflict(
                f"Label '{label}' has no earlier position to roll back to",
                code="nothing_to_roll_back",
            )
        targets = [LabelTarget(version=t["version"], weight=t["weight"]) for t in last.before]
        await self._move_label(prompt, label, targets)
        await self.session.refresh(prompt)
        return prompt

    async def history(
        self, name_or_id: str, limit: int, offset: int, label: str | None
    ) -> tuple[list[PromptEvent], bool]:
        prompt = await self.get(name_or_id)
        rows = await self.repo.events(prompt.id, limit + 1, offset, label)
        return rows[:limit], len(rows) > limit

    async def render(
        self,
        name_or_id: str,
        label: str | None,
        version: int | None,
        variables: dict[str, Any],
        ab_key: str | None,
    ) -> ResolvedPrompt:
        return await resolve_prompt(
            self.session, self.org_id, name_or_id, label, version, variables, ab_key=ab_key
        )
