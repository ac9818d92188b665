"""OpenAI's Responses API over the chat pipeline: a request becomes one chat completion
request, served by ``ChatService.chat`` as ``/v1/chat/completions`` is, and its answer is
translated back; answers are stored for later turns. The whole story (what is stored when,
read-your-writes, which items are supported): docs/architecture.md, "llm: the Responses API".
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any, Literal

from libs.identity import Principal
from services.llm.chat.schemas import invalid_param
from services.llm.chat.service import CallOptions, ChatService, Result
from services.llm.responses.file_search import (
    INCLUDE_RESULTS,
    FileSearchTool,
    RagSearch,
    SearchOutcome,
    last_user_text,
    search_queries,
    searches,
    split_tools,
    with_sources,
)
from services.llm.responses.schemas import ResponsesRequest
from services.llm.responses.store import ResponseStore, not_found
from services.llm.responses.stream import Store, hand_over, translate_stream
from services.llm.responses.translate import Shape, item_messages, to_chat, to_response
from services.llm.settings import LlmSettings


class ResponsesService:
    """``/v1/responses``: create (JSON or a stream of events), read, delete, list inputs."""

    def __init__(self, chat: ChatService, rag: RagSearch, settings: LlmSettings) -> None:
        self.chat = chat
        self.rag = rag
        self.settings = settings
        self.store = ResponseStore(chat)

    async def create(
        self, principal: Principal, body: ResponsesRequest, options: CallOptions
    ) -> Result:
        """The response to ``body``: a ``response`` object, or a stream of Responses events."""
        org_id = principal.require_org()
        history: list[dict[str, Any]] = []
        previous = None
        if body.previous_response_id is not None:
            previous = await self.store.find(org_id, body.previous_response_id, chained=True)
            if previous is None:
                raise not_found(body.previous_response_id, "previous_response_id")
            history = list(previous.history)
        items = await self.store.resolve_references(org_id, body.input, previous)
        turn = item_messages(items)
        tool, other_tools = split_tools(body.tools)
        search: SearchOutcome | None = None
        chat_body, chat_turn = body, turn
        if tool is not None:
            chat_body = body.model_copy(
                update={"tools": other_tools, "tool_choice": _choice(body, other_tools)}
            )
            if searches(body):
                search, chat_turn = await self._file_search(principal, body, tool, history, turn)
        chat = to_chat(chat_body, history, chat_turn)
        shape = Shape(body, search, INCLUDE_RESULTS in _include(body))
        result = await self.chat.chat(principal, chat, replace(options, kind="response"))

        store: Store | None = None
        if body.store is not False:

            def store(response: dict[str, Any], wait: bool = True) -> asyncio.Event | None:
                return self.store.save_later(principal, items, history, turn, response, wait=wait)

        if result.stream is not None:
            events = translate_stream(result.stream, shape, store)
            return Result(stream=events, headers=result.headers)
        assert result.body is not None
        response = to_response(result.body, shape)
        await hand_over(store, response)
        return Result(body=response, headers=result.headers)

    async def _file_search(
        self,
        principal: Principal,
        body: ResponsesRequest,
        tool: FileSearchTool,
        history: list[dict[str, Any]],
        turn: list[dict[str, Any]],
    ) -> tuple[SearchOutcome, list[dict[str, Any]]]:
        """Search with this turn's last user message (and the user's message before it when
        that one is a short follow-up); the turn with the sources put in it."""
        at = next(i for i, t in enumerate(body.tools or []) if t.get("type") == "file_search")
        found = last_user_text(turn)
        outcome = SearchOutcome(f"fs_{uuid.uuid4().hex}", [], [])
        if found is None or not found[1].strip():
            return outcome, turn
        index, question = found
        outcome.queries = search_queries(question, [*history, *turn[:index]])
        outcome.results = await self.rag.search(principal, tool, outcome.queries, f"tools[{at}]")
        alias = self.chat.config.resolve(body.model)
        window = (alias.context_window if alias else None) or 8192
        prompt = outcome.prompt(
            question, min(self.settings.file_search_context_tokens, window // 2)
        )
        if prompt is None:
            return outcome, turn
        turn = list(turn)
        turn[index] = with_sources(turn[index], prompt)
        return outcome, turn

    async def get(self, principal: Principal, response_id: str) -> dict[str, Any]:
        """A stored response of the caller's organization (404 when unknown or expired)."""
        row = await self.store.find(principal.require_org(), response_id)
        if row is None:
            raise not_found(response_id)
        response: dict[str, Any] = row.response
        return response

    async def delete(self, principal: Principal, response_id: str) -> dict[str, Any]:
        if not await self.store.remove(principal.require_org(), response_id):
            raise not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def input_items(
        self,
        principal: Principal,
        response_id: str,
        *,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
    ) -> dict[str, Any]:
        """A page of a stored response's input items (this turn's, as sent)."""
        row = await self.store.find(principal.require_org(), response_id)
        if row is None:
            raise not_found(response_id)
        items: list[dict[str, Any]] = list(row.input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
            if at is None:
                raise invalid_param(f"No input item with id '{after}' in this response", "after")
            items = items[at + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }


def _include(body: ResponsesRequest) -> list[str]:
    include = (body.model_extra or {}).get("include")
    return [str(v) for v in include] if isinstance(include, list) else []


def _choice(
    body: ResponsesRequest, tools: list[dict[str, Any]] | None
) -> str | dict[str, Any] | None:
    """The tool_choice left for the model once file_search is done (aistack always searches):
    none when it named file_search, or when no other tool is left to choose."""
    choice = body.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "file_search":
        return None
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = [t for t in choice.get("tools") or [] if _named(t) != "file_search"]
        return {**choice, "tools": allowed} if allowed else None
    if not tools and choice in ("auto", "required", "none"):
        return None
    return choice


def _named(tool: Any) -> Any:
    return tool.get("type") if isinstance(tool, dict) else None
