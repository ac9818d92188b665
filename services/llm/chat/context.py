"""Prompts and conversations inside ``POST /v1/chat/completions``.

A chat request may carry two aistack fields (with the openai SDK: ``extra_body``):

- ``prompt``: ``{"name" | "id", "label"?, "version"?, "variables"?, "ab_key"?}``. The prompt's
  version is picked (label, weighted A/B, explicit version; default ``production``, else the
  newest) and rendered; its messages go before the request's own ``messages`` (which may be
  empty: then the prompt's messages are the whole request). The version's ``model``,
  when it names one, is the model used (so a label or an A/B split can switch models); the
  request's ``model`` applies when the version names none. The version's ``params`` are
  defaults: every parameter the request sets itself wins.
- ``conversation_id``: the stored history of one of the caller's conversations is put after
  the prompt's messages and before the request's messages (with no request messages: after
  the prompt's leading system messages and before its other ones, which are then the new
  turn), trimmed (oldest whole turns first,
  system messages kept) to the model's context window minus the reply's reserve
  (``max_tokens``, else ``LLM_TPM_COMPLETION_RESERVE``), counted offline by
  :mod:`services.llm.tokens.tokenizer` (the model's tiktoken encoding, loaded only when the
  history's UTF-8 size does not fit already). When the reply is complete, the new messages
  and the reply (the first choice) are appended; a streamed reply is stored before ``[DONE]``
  is sent. A failed or interrupted call stores nothing.

Which prompt version served the request is recorded in ``llm.prompt_uses`` (with the request
id), on the stored messages, in the usage event, and in the ``x-aistack-prompt-version``
header. The database is read before the provider is called and written after it answered;
no connection is held while the model runs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from pydantic import ValidationError as PydanticValidationError

from libs.db import SessionFactory, session_scope
from libs.errors import ServiceUnavailable, ValidationFailed
from libs.identity import Principal
from services.llm.chat.schemas import ChatCompletionRequest
from services.llm.chat.stream import DONE, Assembler
from services.llm.conversations.service import KEEP_ROLES, load_history, store_exchange
from services.llm.prompts.service import ResolvedPrompt, record_prompt_use, resolve_prompt
from services.llm.routing.config import RoutingConfig
from services.llm.tokens import estimate, tokenizer

log = logging.getLogger("aistack.llm")

# used when a model alias declares no context_window
DEFAULT_CONTEXT_WINDOW = 8192
AISTACK_FIELDS = frozenset({"prompt", "conversation_id"})
REPLY_FIELDS = frozenset({"role", "content", "tool_calls", "function_call", "name", "refusal"})


@dataclass
class ChatContext:
    """What a prompt and a conversation made of a request, and how to record its reply."""

    body: ChatCompletionRequest  # the request the provider gets (model, messages, params)
    principal: Principal
    org_id: uuid.UUID
    request_id: str
    sessions: SessionFactory
    resolved: ResolvedPrompt | None = None
    conversation_id: uuid.UUID | None = None
    new_messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prompt_version_id(self) -> uuid.UUID | None:
        return self.resolved.version_id if self.resolved else None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.resolved is not None:
            out["x-aistack-prompt-version"] = str(self.resolved.version_id)
            out["x-aistack-prompt-version-number"] = str(self.resolved.version_number)
        return out

    async def record(self, completion: dict[str, Any]) -> bool:
        """Store the exchange and the prompt use in one transaction; False if that failed."""
        choices = completion.get("choices") or []
        message = (choices[0].get("message") or {}) if choices else {}
        # keep what a chat request accepts back as history (not annotations, logprobs...)
        reply = {k: v for k, v in message.items() if k in REPLY_FIELDS and v is not None}
        try:
            async with session_scope(self.sessions) as session:
                if self.resolved is not None:
                    await record_prompt_use(
                        session,
                        self.resolved,
                        org_id=self.org_id,
                        request_id=self.request_id,
                        user_id=self.principal.user_id,
                        key_id=self.principal.key_id,
                        conversation_id=self.conversation_id,
                    )
                if self.conversation_id is not None and choices:
                    await store_exchange(
                        session,
                        self.conversation_id,
                        self.new_messages,
                        reply,
                        completion.get("usage"),
                        self.prompt_version_id,
                        request_id=self.request_id,
                        model=self.body.model,
                    )
            return True
        except Exception:
            # the caller has (or is getting) the reply and was billed for it: do not fail it
            log.error("storing the reply of %s failed", self.request_id, exc_info=True)
            return False

    async def finish_json(self, completion: dict[str, Any], headers: dict[str, str]) -> None:
        stored = await self.record(completion)
        headers.update(self.headers())
        if self.conversation_id is not None:
            headers["x-aistack-conversation-stored"] = "true" if stored else "false"

    def finish_stream(
        self, stream: AsyncIterator[bytes], headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        """Pass an SSE stream through; once it ends well, store the reply, then send [DONE]."""
        headers.update(self.headers())
        return self._relay(stream)

    def _estimate(self, asm: Assembler) -> dict[str, int]:
        """The same offline estimate the usage event gets when a stream reports no usage."""
        return estimate.stream_usage(self.body.messages_json(), self.body.tools, asm.chars)

    async def _relay(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        asm = Assembler()
        broken = False
        created = 0
        try:
            async for piece in stream:
                if piece == DONE:
                    if not broken:
                        usage = asm.usage or self._estimate(asm)
                        completion = asm.completion(self.request_id, created, usage)
                        with anyio.CancelScope(shield=True):
                            await self.record(completion)
                elif piece.startswith(b"data: {"):
                    chunk = orjson.loads(piece[6:])
                    if "error" in chunk:
                        broken = True
                    else:
                        asm.add(chunk)
                        created = created or int(chunk.get("created") or 0)
                yield piece
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def _split_prompt(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A rendered prompt's leading system/developer messages, and the rest."""
    lead = 0
    while lead < len(messages) and messages[lead].get("role") in KEEP_ROLES:
        lead += 1
    return messages[:lead], messages[lead:]


async def prepare_chat(
    sessions: SessionFactory | None,
    config: RoutingConfig,
    principal: Principal,
    body: ChatCompletionRequest,
    request_id: str,
    reply_reserve: int,
) -> ChatContext:
    """Resolve the request's prompt and conversation into the request the provider gets."""
    if sessions is None:
        raise ServiceUnavailable("Prompts and conversations need the llm database")
    org_id = principal.require_org()
    resolved: ResolvedPrompt | None = None
    history: list[dict[str, Any]] = []
    own = body.messages_json()
    async with session_scope(sessions) as session:
        if body.prompt is not None:
            ref = body.prompt
            resolved = await resolve_prompt(
                session,
                org_id,
                ref.ref,
                label=ref.label,
                version=ref.version,
                variables=ref.variables,
                request_id=request_id,
                ab_key=ref.ab_key,
            )
        # the prompt is a prefix before the history; what comes after the history (the
        # request's messages, else the prompt's non-system messages) is the turn to store
        rendered = resolved.messages if resolved else []
        if own:
            lead, new = rendered, own
        else:
            lead, new = _split_prompt(rendered)
        model = resolved.model if resolved is not None and resolved.model else body.model
        if body.conversation_id is not None:
            alias = config.resolve(model)
            window = (alias.context_window if alias else None) or DEFAULT_CONTEXT_WINDOW
            reserve = body.output_limit or reply_reserve
            history = await load_history(
                session,
                principal,
                body.conversation_id,
                window,
                tokenizer.plan_for(alias),
                reserve=reserve,
                new_messages=lead + new,
            )
    messages = lead + history + new
    if not messages:
        raise ValidationFailed("messages must not be empty", code="invalid_request")
    params = body.model_dump(exclude_none=True, exclude={"model", "messages", *AISTACK_FIELDS})
    if resolved is not None:
        params = {**resolved.params, **params}
    try:
        effective = ChatCompletionRequest.model_validate(
            {**params, "model": model, "messages": messages}
        )
    except PydanticValidationError as exc:
        raise ValidationFailed(
            f"The prompt's parameters make an invalid request: {exc.errors()[0]['msg']}",
            code="invalid_prompt_params",
        ) from exc
    return ChatContext(
        body=effective,
        principal=principal,
        org_id=org_id,
        request_id=request_id,
        sessions=sessions,
        resolved=resolved,
        conversation_id=body.conversation_id,
        new_messages=new,
    )
