"""OpenAI's Responses API over the chat pipeline: a request becomes one chat completion
request, served by ``ChatService.chat`` as ``/v1/chat/completions`` is, and its answer is
translated back; answers are stored for later turns. The whole story (what is stored when,
read-your-writes, which items are supported): docs/architecture.md, "llm: the Responses API".
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from libs.identity import Principal
from services.llm.chat.schemas import invalid_param
from services.llm.chat.service import CallOptions, ChatService, Result
from services.llm.responses.schemas import ResponsesRequest
from services.llm.responses.store import ResponseStore, not_found
from services.llm.responses.stream import Store, hand_over, translate_stream
from services.llm.responses.translate import Shape, item_messages, to_chat, to_response


class ResponsesService:
    """``/v1/responses``: create (JSON or a stream of events), read, delete, list inputs."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
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
        chat = to_chat(body, history, turn)
        shape = Shape(body)
        result = await self.chat.chat(principal, chat, options)

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
