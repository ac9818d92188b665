"""Stored responses as the API uses them: written off the response path, read back with
read-your-writes (a response this process is still writing is waited for), item references
resolved against them. Their SQL is in :mod:`.repository`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from libs.errors import NotFound
from libs.identity import Principal
from libs.storage_errors import describe, outage_of
from services.llm.chat.schemas import invalid_param
from services.llm.chat.service import ChatService
from services.llm.responses.translate import input_items_of, is_reference, output_messages

log = logging.getLogger("aistack.llm.responses")

STORED = Counter(
    "aistack_llm_responses_stored_total",
    "Responses of /v1/responses written to the store (ok) or not (error: logged; a later "
    "previous_response_id to it is a 404)",
    ["status"],
)
STORE_WAITS = Counter(
    "aistack_llm_responses_store_waits_total",
    "Requests of /v1/responses that waited for their own store write before answering, "
    "because LLM_RESPONSES_MAX_PENDING_WRITES writes of this process were in flight",
)
PENDING_WRITES = Gauge(
    "aistack_llm_responses_pending_writes",
    "Stored responses of /v1/responses this process has still to write to PostgreSQL",
)

# well-formed response ids (ours): only these are worth waiting for
_RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")
# another llm process may still be writing a response its client has already chained to
_CHAIN_RETRIES_S = (0.05, 0.1, 0.2)
# item ids aistack gives (output items: msg_/fc_<hex>_<n>; input items: <prefix>_<hex>_in<n>)
# name their response: resp_<hex>
_ITEM_ID = re.compile(r"(?:msg|fc|fco|item)_([0-9a-f]{32})_(?:in)?[0-9]+")


@dataclass(frozen=True)
class _PendingWrite:
    done: asyncio.Event
    # the ids of the items it stores: an item_reference by an id that names no response (a
    # client's own) finds its response here
    item_ids: frozenset[str]


# writes of this process not yet committed, by response id (read-your-writes)
_pending: dict[str, _PendingWrite] = {}


def not_found(response_id: str, param: str | None = None) -> NotFound:
    message = f"{'Previous response' if param else 'Response'} with id '{response_id}' not found."
    details = [{"field": param, "message": message}] if param else None
    return NotFound(message, code="response_not_found", details=details)


def _item_not_found(item_id: str, param: str) -> NotFound:
    message = f"Item with id '{item_id}' not found."
    return NotFound(message, code="item_not_found", details=[{"field": param, "message": message}])


def _item_ids(items: str | list[dict[str, Any]] | None, response: dict[str, Any]) -> frozenset[str]:
    """The ids a stored response will hold: its output items' and its input items' own."""
    ids = [item.get("id") for item in response.get("output") or []]
    if isinstance(items, list):
        ids += [item.get("id") for item in items if isinstance(item, dict)]
    return frozenset(i for i in ids if isinstance(i, str))


async def _own_write(response_id: str) -> None:
    """Wait (at most 10 s) for this process's write of ``response_id`` if one is in flight
    (read-your-writes)."""
    pending = _pending.get(response_id)
    if pending is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pending.done.wait(), timeout=10)


class ResponseStore:
    """The organization's stored responses, through the chat service's database and
    background tasks (a write outlives its request; the service drains them at shutdown)."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    def save_later(
        self,
        principal: Principal,
        items: str | list[dict[str, Any]] | None,
        history: list[dict[str, Any]],
        turn: list[dict[str, Any]],
        response: dict[str, Any],
        *,
        wait: bool = True,
    ) -> asyncio.Event | None:
        """Write ``response`` (this turn's input ``items``) off the response path. The write's
        event when the caller must wait for it before answering:
        ``LLM_RESPONSES_MAX_PENDING_WRITES`` writes are already in flight (and ``wait``; a
        client already gone is not waited for)."""
        sessions = self.chat.sessions()
        settings = self.chat.settings
        response_id = response["id"]
        if sessions is None:
            STORED.labels("error").inc()
            log.warning("response %s not stored: the llm service has no database", response_id)
            return None
        crowded = len(_pending) >= settings.responses_max_pending_writes
        done = asyncio.Event()
        pending = _pending[response_id] = _PendingWrite(done, _item_ids(items, response))
        PENDING_WRITES.set(len(_pending))
        org_id = principal.require_org()
        ttl_days = settings.responses_ttl_days

        async def write() -> None:
            try:
                # SQLAlchemy and the models load with the first stored response
                from services.llm.responses import repository

                await repository.save(
                    sessions,
                    response=response,
                    org_id=org_id,
                    user_id=principal.user_id,
                    key_id=principal.key_id,
                    input_items=input_items_of(items, response_id.removeprefix("resp_")),
                    history=[*history, *turn, *output_messages(response)],
                    ttl_days=ttl_days,
                )
                STORED.labels("ok").inc()
            except Exception as exc:
                STORED.labels("error").inc()
                if outage_of(exc) is not None:  # down, or hung past DB_COMMAND_TIMEOUT_SECONDS
                    log.warning(
                        "response %s could not be stored: database unavailable (%s)",
                        response_id,
                        describe(exc),
                    )
                else:
                    log.exception("response %s could not be stored", response_id)
            finally:
                done.set()
                if _pending.get(response_id) is pending:
                    del _pending[response_id]
                PENDING_WRITES.set(len(_pending))

        self.chat.spawn(write())
        if crowded and wait:
            STORE_WAITS.inc()
            return done
        return None

    async def find(self, org_id: uuid.UUID, response_id: str, *, chained: bool = False) -> Any:
        """The stored row (``StoredResponse``), or None. A response this process is still
        writing is waited for; when ``chained`` (previous_response_id), one another process
        may be writing is looked up again a few times before it is called unknown."""
        sessions = self.chat.sessions()
        if sessions is None or len(response_id) > 80:
            return None
        # SQLAlchemy and the models load with the first stored response read
        from services.llm.responses import repository

        await _own_write(response_id)
        row = await repository.load(sessions, org_id, response_id)
        if row is None and chained and _RESPONSE_ID.fullmatch(response_id):
            for delay in _CHAIN_RETRIES_S:
                await asyncio.sleep(delay)
                row = await repository.load(sessions, org_id, response_id)
                if row is not None:
                    break
        return row

    async def remove(self, org_id: uuid.UUID, response_id: str) -> bool:
        """Delete the organization's response (one still being written is waited for, so it
        is deleted rather than left); False when there is none."""
        if await self.find(org_id, response_id) is None:
            return False
        from services.llm.responses import repository  # loaded by find

        return await repository.remove(self.chat.sessions(), org_id, response_id)

    async def resolve_references(
        self,
        org_id: uuid.UUID,
        items: str | list[dict[str, Any]] | None,
        previous: Any = None,
    ) -> str | list[dict[str, Any]] | None:
        """``items`` with each ``item_reference`` replaced by the item it names: one of the
        ``previous`` response's (its output, then its input items), else one of the
        organization's stored responses (:func:`.repository.find_items`). Another
        organization's, an expired or an unknown id: 404 ``item_not_found`` naming the item."""
        if not isinstance(items, list):
            return items
        refs: dict[int, str] = {}
        for i, item in enumerate(items):
            if isinstance(item, dict) and is_reference(item):
                item_id = item.get("id")
                if not isinstance(item_id, str) or not item_id or len(item_id) > 200:
                    raise invalid_param(
                        f"input[{i}].id must be the id of a stored item", f"input[{i}].id"
                    )
                refs[i] = item_id
        if not refs:
            return items
        known: dict[str, dict[str, Any]] = {}
        if previous is not None:
            for item in [*(previous.response.get("output") or []), *previous.input_items]:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    known.setdefault(item["id"], item)
        missing = list(dict.fromkeys(v for v in refs.values() if v not in known))
        sessions = self.chat.sessions()
        if missing and sessions is not None:
            from services.llm.responses import repository  # SQLAlchemy, with the first read

            owners = {
                item_id: f"resp_{m.group(1)}"
                for item_id in missing
                if (m := _ITEM_ID.fullmatch(item_id)) is not None
            }
            # responses this process is still writing are waited for (read-your-writes): the
            # ones the ids name, and the ones holding an id (a client's own names none)
            wanted = set(missing)
            writing = {rid for rid, w in _pending.items() if not w.item_ids.isdisjoint(wanted)}
            for response_id in set(owners.values()) | writing:
                await _own_write(response_id)
            known.update(await repository.find_items(sessions, org_id, missing, owners))
            # one another process may still be writing (named by its id): looked up again briefly
            late = {k: v for k, v in owners.items() if k not in known}
            for delay in _CHAIN_RETRIES_S if late else ():
                await asyncio.sleep(delay)
                known.update(await repository.find_items(sessions, org_id, list(late), late))
                late = {k: v for k, v in late.items() if k not in known}
                if not late:
                    break
        out = list(items)
        for i, item_id in refs.items():
            if item_id not in known:
                raise _item_not_found(item_id, f"input[{i}].id")
            out[i] = known[item_id]
        return out
