"""HTTP routes of the prompt store: ``/v1/prompts`` (aistack's error shape).

``{prompt}`` in a path is the prompt's id or its name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from libs.db import SessionDep
from libs.errors import ValidationFailed
from libs.identity import Principal, require_scope
from libs.permissions import Scope
from services.llm.prompts.schemas import (
    LABEL_NAME,
    RESERVED_LABELS,
    SETTABLE_LABEL,
    Actor,
    HistoryEntry,
    HistoryList,
    LabelSet,
    LabelTargetOut,
    PromptCreate,
    PromptList,
    PromptOut,
    PromptUpdate,
    PromptVersionCreate,
    PromptVersionList,
    PromptVersionOut,
    RenderOut,
    RenderRequest,
)

if TYPE_CHECKING:
    from services.llm.models import Prompt, PromptEvent, PromptLabel, PromptVersion
    from services.llm.prompts.service import PromptService

router = APIRouter(prefix="/v1/prompts", tags=["prompts"])

UsePrincipal = Annotated[Principal, require_scope(Scope.LLM_USE)]
PromptRef = Annotated[str, Path(min_length=1, max_length=200, description="Prompt id or name")]
LabelName = Annotated[str, Path(pattern=LABEL_NAME, description="Label name")]
# a label being set: "latest" is reserved (422 reserved_label)
SettableLabelName = Annotated[
    str,
    Path(
        pattern=LABEL_NAME,
        description="Label name (not latest: it always means the newest version)",
        json_schema_extra={"pattern": SETTABLE_LABEL},
    ),
]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0)]


async def get_prompt_service(session: SessionDep, principal: UsePrincipal) -> PromptService:
    """The caller's prompt store."""
    # imported here: SQLAlchemy, the models and Jinja load with the first prompt request, not
    # with the llm process (chat, embeddings and models never need them)
    from services.llm.prompts.service import PromptService

    return PromptService(session, principal)


if TYPE_CHECKING:
    PromptServiceDep = Annotated[PromptService, Depends(get_prompt_service)]
else:  # the service's module is not imported yet when FastAPI reads these annotations
    PromptServiceDep = Annotated[Any, Depends(get_prompt_service)]


def prompt_out(prompt: Prompt, labels: list[PromptLabel]) -> PromptOut:
    return PromptOut(
        id=prompt.id,
        name=prompt.name,
        description=prompt.description,
        latest_version=prompt.latest_version,
        labels={
            label.name: [LabelTargetOut.model_validate(t) for t in label.targets]
            for label in labels
        },
        created_by=Actor(user_id=prompt.created_by_user, key_id=prompt.created_by_key),
        created_at=prompt.created_at,
        updated_at=prompt.updated_at,
    )


def version_out(version: PromptVersion, labels: list[PromptLabel]) -> PromptVersionOut:
    from services.llm.prompts.render import check_templates  # Jinja: not with the router

    vid = str(version.id)
    return PromptVersionOut(
        id=version.id,
        prompt_id=version.prompt_id,
        version=version.number,
        messages=version.messages,
        model=version.model,
        params=version.params or {},
        variables=version.variables,
        template_variables=check_templates(version.messages),
        commit_message=version.commit_message,
        labels=[lb.name for lb in labels if any(t["version_id"] == vid for t in lb.targets)],
        created_by=Actor(user_id=version.created_by_user, key_id=version.created_by_key),
        created_at=version.created_at,
    )


def event_out(event: PromptEvent) -> HistoryEntry:
    return HistoryEntry(
        id=event.id,
        action=event.action,
        label=event.label,
        version_id=event.version_id,
        before=event.before,
        after=event.after,
        actor=Actor(user_id=event.actor_user, key_id=event.actor_key),
        created_at=event.created_at,
    )


async def _prompt_out(svc: PromptService, prompt: Prompt) -> PromptOut:
    labels = await svc.labels_of([prompt])
    return prompt_out(prompt, labels[prompt.id])


@router.post("", status_code=201, response_model=PromptOut, summary="Create a prompt")
async def create_prompt(body: PromptCreate, svc: PromptServiceDep) -> PromptOut:
    return await _prompt_out(svc, await svc.create(body))


@router.get("", response_model=PromptList, summary="List prompts (by name)")
async def list_prompts(svc: PromptServiceDep, limit: Limit = 20, offset: Offset = 0) -> PromptList:
    rows, has_more = await svc.list_page(limit, offset)
    labels = await svc.labels_of(rows)
    return PromptList(data=[prompt_out(p, labels[p.id]) for p in rows], has_more=has_more)


@router.get("/{prompt}", response_model=PromptOut, summary="Get a prompt and its labels")
async def get_prompt(prompt: PromptRef, svc: PromptServiceDep) -> PromptOut:
    return await _prompt_out(svc, await svc.get(prompt))


@router.patch("/{prompt}", response_model=PromptOut, summary="Change a prompt's description")
async def update_prompt(prompt: PromptRef, body: PromptUpdate, svc: PromptServiceDep) -> PromptOut:
    return await _prompt_out(svc, await svc.update(prompt, body.description))


@router.post(
    "/{prompt}/versions",
    status_code=201,
    response_model=PromptVersionOut,
    summary="Create a new immutable version (optionally pointing labels at it)",
)
async def create_version(
    prompt: PromptRef, body: PromptVersionCreate, svc: PromptServiceDep
) -> PromptVersionOut:
    version = await svc.create_version(prompt, body)
    labels = await svc.repo.labels([version.prompt_id])
    return version_out(version, labels)


@router.get(
    "/{prompt}/versions", response_model=PromptVersionList, summary="List versions, newest first"
)
async def list_versions(
    prompt: PromptRef,
    svc: PromptServiceDep,
    limit: Limit = 20,
    offset: Offset = 0,
) -> PromptVersionList:
    found, rows, has_more = await svc.versions(prompt, limit, offset)
    labels = await svc.repo.labels([found.id])
    return PromptVersionList(data=[version_out(v, labels) for v in rows], has_more=has_more)


@router.get(
    "/{prompt}/versions/{number}", response_model=PromptVersionOut, summary="Get one version"
)
async def get_version(
    prompt: PromptRef,
    number: Annotated[int, Path(ge=1)],
    svc: PromptServiceDep,
) -> PromptVersionOut:
    found, version = await svc.version(prompt, number)
    return version_out(version, await svc.repo.labels([found.id]))


@router.put(
    "/{prompt}/labels/{label}",
    response_model=PromptOut,
    summary="Point a label at a version, or at several with weights (A/B)",
)
async def set_label(
    prompt: PromptRef,
    label: SettableLabelName,
    body: LabelSet,
    svc: PromptServiceDep,
) -> PromptOut:
    if label in RESERVED_LABELS:
        raise ValidationFailed(f"Label '{label}' is reserved", code="reserved_label")
    return await _prompt_out(svc, await svc.set_label(prompt, label, body))


@router.post(
    "/{prompt}/labels/{label}/rollback",
    response_model=PromptOut,
    summary="Point a label back where it was before its last move",
)
async def rollback_label(prompt: PromptRef, label: LabelName, svc: PromptServiceDep) -> PromptOut:
    return await _prompt_out(svc, await svc.rollback_label(prompt, label))


@router.delete("/{prompt}/labels/{label}", status_code=204, summary="Remove a label")
async def delete_label(prompt: PromptRef, label: LabelName, svc: PromptServiceDep) -> Response:
    await svc.delete_label(prompt, label)
    return Response(status_code=204)


@router.get(
    "/{prompt}/history",
    response_model=HistoryList,
    summary="Who created versions and moved labels, and when (newest first)",
)
async def history(
    prompt: PromptRef,
    svc: PromptServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
    label: Annotated[str | None, Query(pattern=LABEL_NAME)] = None,
) -> HistoryList:
    rows, has_more = await svc.history(prompt, limit, offset, label)
    return HistoryList(data=[event_out(e) for e in rows], has_more=has_more)


@router.post(
    "/{prompt}/render",
    response_model=RenderOut,
    summary="Preview: render a version (by label, A/B choice or number) with variables",
)
async def render(prompt: PromptRef, body: RenderRequest, svc: PromptServiceDep) -> RenderOut:
    resolved = await svc.render(prompt, body.label, body.version, body.variables, body.ab_key)
    return RenderOut(
        prompt_id=resolved.prompt_id,
        name=resolved.name,
        version_id=resolved.version_id,
        version=resolved.version_number,
        label=resolved.label,
        model=resolved.model,
        params=resolved.params,
        messages=resolved.messages,
    )
