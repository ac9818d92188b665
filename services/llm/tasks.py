"""Background work of the llm service: its worker (``python -m libs.worker llm``) replays
the usage outbox and purges expired stored responses (``llm.responses``, hourly).

An llm process that stopped while Redis was unreachable left its usage events in
``llm.usage_outbox`` (see :class:`libs.usage.UsageSender`); the worker queues them to billing
every few seconds once Redis answers (:func:`libs.usage.replay_outbox_forever`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from libs.storage_errors import describe, outage_of
from libs.usage import UsageOutbox, replay_outbox_forever
from services.llm.responses import repository

log = logging.getLogger("aistack.llm.tasks")

PURGE_INTERVAL_S = 3600.0


async def purge_responses_forever(sessions: Any, interval_s: float = PURGE_INTERVAL_S) -> None:
    """Delete stored responses past their expiry (``LLM_RESPONSES_TTL_DAYS``), then again
    every ``interval_s`` (expired ones are invisible already: this only frees the space)."""
    while True:
        try:
            purged = await repository.purge(sessions)
            if purged:
                log.info("%d expired stored responses purged", purged)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _failed("responses purge", exc, interval_s)
        await asyncio.sleep(interval_s)


def _failed(what: str, exc: Exception, interval_s: float) -> None:
    """A round that failed: PostgreSQL or Redis unreachable (or PostgreSQL hung past
    ``DB_COMMAND_TIMEOUT_SECONDS``) is one line; anything else carries its traceback."""
    dependency = outage_of(exc)
    if dependency is not None:
        log.warning(
            "%s failed: %s unavailable (%s); next try in %.0f s",
            what,
            dependency,
            describe(exc),
            interval_s,
        )
    else:
        log.warning("%s failed; next try in %.0f s", what, interval_s, exc_info=exc)


async def on_startup(ctx: dict[str, Any]) -> None:
    outbox = UsageOutbox("llm", lambda: ctx["db"])
    ctx["usage_outbox_task"] = asyncio.create_task(replay_outbox_forever(outbox, ctx["redis"]))
    ctx["responses_purge_task"] = asyncio.create_task(purge_responses_forever(ctx["db"]))


async def on_shutdown(ctx: dict[str, Any]) -> None:
    for name in ("usage_outbox_task", "responses_purge_task"):
        task: asyncio.Task[None] | None = ctx.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
