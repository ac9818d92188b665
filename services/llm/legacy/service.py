"""OpenAI's legacy Completions API (``POST /v1/completions``) as a translation over the chat
pipeline.

Each prompt becomes one chat completion request with the prompt as its one user message
(:func:`~.translate.to_chat`), served by ``ChatService.chat`` exactly as
``/v1/chat/completions`` is: routing and aliases, retries, fallback and breakers, TPM limits,
the response cache, ``Idempotency-Key``, metrics and one usage event per chat call all apply
unchanged. The
answer is translated back into a ``text_completion``, a stream of chat chunks into
``text_completion`` chunks (:mod:`.translate`). The model answers the prompt
as a chat turn; it does not continue it as raw text (no provider behind aistack is called in
raw completion mode).

A list of prompts is one chat call per prompt (at most :data:`~.translate.MAX_PROMPTS`, run at
once; at most :data:`CONCURRENCY` at a time when not streamed), with OpenAI's choice indexes:
prompt ``i``'s ``j``-th choice has index ``i * n + j``; ``usage`` is the sum of the calls'. Each
call is its own upstream request, so each emits its own usage event (billing stays exact);
with an ``Idempotency-Key`` each call is claimed under ``<key>:<i>`` (one prompt: the key as
sent). If one call fails before its answer starts, the request fails with that call's error;
calls already answered are billed (their upstream did the work), streams already open are
closed and billed as cut short.

Supported: ``prompt`` (a text or a list of texts), ``max_tokens`` (default 16, as OpenAI;
``null``: no limit), ``temperature``, ``top_p``, ``n``, ``stop``, ``stream`` and
``stream_options.include_usage``, ``echo`` (the prompt before each choice's text; streamed:
in each choice's first chunk), ``best_of`` equal to ``n`` (no ranking to do),
``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``seed``, ``user``, and aistack's
``cache`` and ``timeout``. Refused with a 400 naming the parameter: token-id prompts (aistack
cannot know the model's tokenizer), ``suffix``, ``logprobs``, ``best_of`` other than ``n``,
``max_tokens`` 0, and any parameter OpenAI does not define.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace

from libs.errors import AppError, BadRequest
from libs.identity import Principal
from services.llm.chat.schemas import ChatCompletionRequest
from services.llm.chat.service import CallOptions, ChatService, Result
from services.llm.legacy.schemas import CompletionRequest
from services.llm.legacy.translate import (
    Shape,
    aclose,
    check,
    prompts_of,
    to_chat,
    to_completion,
    translate_stream,
)

CONCURRENCY = 16  # chat calls of one non-streamed request running at once


class CompletionService:
    """``POST /v1/completions``: the request's chat calls, their answers translated back."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def create(
        self, principal: Principal, body: CompletionRequest, options: CallOptions
    ) -> Result:
        check(body)
        prompts = prompts_of(body)
        key = options.idempotency_key
        if key and len(prompts) > 1 and len(key) + len(f":{len(prompts) - 1}") > 255:
            raise BadRequest(
                f"Idempotency-Key is too long for {len(prompts)} prompts: each is claimed under "
                "<key>:<index>, at most 255 characters",
                code="invalid_idempotency_key",
            )
        chats = [to_chat(body, p) for p in prompts]
        options = replace(options, kind="completion")
        shape = Shape.of(body, prompts)
        if body.stream:
            results = await self._open_all(principal, chats, options, None)
            streams = []
            for result in results:
                if result.stream is None:  # not expected: the chat path streams a stream request
                    for other in results:
                        await _close_unread(other)
                    raise RuntimeError("the chat call of a streamed completion did not stream")
                streams.append(result.stream)
            return Result(stream=translate_stream(streams, shape), headers=results[0].headers)
        results = await self._open_all(principal, chats, options, CONCURRENCY)
        bodies = [r.body for r in results if r.body is not None]
        if len(bodies) != len(results):
            raise RuntimeError("the chat call of a completion answered without a body")
        return Result(body=to_completion(bodies, shape), headers=results[0].headers)

    async def _open_all(
        self,
        principal: Principal,
        chats: list[ChatCompletionRequest],
        options: CallOptions,
        limit: int | None,
    ) -> list[Result]:
        """Every prompt's chat call (at most ``limit`` at a time); on a failure, the calls not
        yet done are cancelled, open streams closed and the first failure raised."""
        slots = asyncio.Semaphore(limit or len(chats))

        async def one(i: int, chat: ChatCompletionRequest) -> Result:
            async with slots:
                return await self.chat.chat(principal, chat, _options(options, i, len(chats)))

        tasks = [asyncio.create_task(one(i, c)) for i, c in enumerate(chats)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            for task in tasks:
                task.cancel()
            await _settle_tasks(tasks)
            raise
        failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if not failed:
            return [t.result() for t in tasks]
        for task in tasks:
            task.cancel()
        await _settle_tasks(tasks)
        raise _first_error(e for e in failed if e is not None)


def _options(opts: CallOptions, index: int, count: int) -> CallOptions:
    if count == 1 or not opts.idempotency_key:
        return opts
    return replace(opts, idempotency_key=f"{opts.idempotency_key}:{index}")


def _first_error(errors: Iterable[BaseException]) -> BaseException:
    errors = list(errors)
    for err in errors:
        if isinstance(err, AppError):
            return err
    return errors[0]


async def _close_unread(result: Result) -> None:
    """Close the stream of a call that will not be relayed: the chat relay's cleanup runs
    (closes the upstream; bills what was produced as cut short) though it was never read."""
    if result.stream is not None:
        await aclose(result.stream)


async def _settle_tasks(tasks: list[asyncio.Task[Result]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is None:
            await _close_unread(task.result())
