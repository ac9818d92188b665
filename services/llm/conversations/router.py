"""HTTP routes of conversations: ``/v1/conversations`` (aistack's error shape)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Response

from libs.db import SessionDep
from libs.identity import Principal, require_scope
from libs.permissions import Scope
from services.llm.conversations.schemas import (
    ConversationCreate,
    ConversationDetail,
    ConversationList,
    ConversationOut,
    ConversationUpdate,
    MessageList,
    MessagesAppend,
)

if TYPE_CHECKING:
    from services.llm.conversations.service import ConversationService
    from services.llm.models import Conversation, ConversationMessage

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

UsePrincipal = Annotated[Principal, require_scope(Scope.LLM_USE)]


async def get_conversation_service(
    session: SessionDep, principal: UsePrincipal
) -> ConversationService:
    """The caller's conversations."""
    # imported here: SQLAlchemy and the models load with the first conversation request, not
    # with the llm process (chat, embeddings and models never need them)
    from services.llm.conversations.service import ConversationService

    return ConversationService(session, principal)


if TYPE_CHECKING:
    ConversationServiceDep = Annotated[ConversationService, Depends(get_conversation_service)]
else:  # the service's module is not imported yet when FastAPI reads these annotations
    ConversationServiceDep = Annotated[Any, Depends(get_conversation_service)]


def conversation_out(c: Conversation) -> ConversationOut:
    return ConversationOut(
        id=c.id,
        title=c.title,
        model=c.model,
        metadata=c.meta,
        message_count=c.message_count,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def detail_out(c: Conversation, rows: list[ConversationMessage]) -> ConversationDetail:
    from services.llm.conversations.service import message_out  # not with the router: see above

    return ConversationDetail(
        **conversation_out(c).model_dump(), messages=[message_out(r) for r in rows]
    )


@router.post("", status_code=201, response_model=ConversationDetail, summary="Start a conversation")
async def create_conversation(
    body: ConversationCreate, svc: ConversationServiceDep
) -> ConversationDetail:
    conversation = await svc.create(body)
    return detail_out(conversation, await svc.repo.messages(conversation.id))


@router.get(
    "",
    response_model=ConversationList,
    summary="List your conversations, newest first (cursor pagination)",
)
async def list_conversations(
    svc: ConversationServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ConversationList:
    rows, has_more, next_cursor = await svc.list_page(limit, cursor)
    return ConversationList(
        data=[conversation_out(c) for c in rows], has_more=has_more, next_cursor=next_cursor
    )


@router.get(
    "/{conversation_id}",
    response_model=ConversationDetail,
    summary="Get a conversation with its messages",
)
async def get_conversation(
    conversation_id: uuid.UUID, svc: ConversationServiceDep
) -> ConversationDetail:
    conversation, rows = await svc.messages(conversation_id)
    return detail_out(conversation, rows)


@router.patch(
    "/{conversation_id}",
    response_model=ConversationOut,
    summary="Rename a conversation or replace its metadata",
)
async def update_conversation(
    conversation_id: uuid.UUID,
    body: ConversationUpdate,
    svc: ConversationServiceDep,
) -> ConversationOut:
    return conversation_out(await svc.update(conversation_id, body))


@router.delete("/{conversation_id}", status_code=204, summary="Delete a conversation")
async def delete_conversation(conversation_id: uuid.UUID, svc: ConversationServiceDep) -> Response:
    await svc.delete(conversation_id)
    return Response(status_code=204)


@router.post(
    "/{conversation_id}/messages",
    status_code=201,
    response_model=MessageList,
    summary="Append messages",
)
async def append_messages(
    conversation_id: uuid.UUID,
    body: MessagesAppend,
    svc: ConversationServiceDep,
) -> MessageList:
    from services.llm.conversations.service import message_out  # not with the router: see above

    rows = await svc.append(conversation_id, body.messages)
    return MessageList(data=[message_out(r) for r in rows])


@router.get(
    "/{conversation_id}/export",
    summary="Export a conversation and all its messages as a JSON file",
    responses={200: {"content": {"application/json": {}}}},
    response_model=None,
)
async def export_conversation(conversation_id: uuid.UUID, svc: ConversationServiceDep) -> Response:
    data = await svc.export(conversation_id)
    return Response(
        orjson.dumps(data, option=orjson.OPT_INDENT_2),
        media_type="application/json",
        headers={
            "content-disposition": f'attachment; filename="conversation-{conversation_id}.json"'
        },
    )
