"""Embeddings through the llm service's ``/v1/embeddings`` (internal HTTP), as the
organization: rag signs an internal token for it, so configured providers and aliases apply and
the usage is metered to that organization."""

from __future__ import annotations

import array
import asyncio
import base64
import logging
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from libs.errors import AccountFrozen
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.permissions import Scope
from services.rag.settings import RagSettings

log = logging.getLogger("aistack.rag.embed")


class EmbeddingError(Exception):
    """Embedding failed for good: after retries, or ``refused`` (the model said no: unknown
    model, input it does not take), which is the caller's to fix."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


# (model, input type, organization, user, retries)
Key = tuple[str, str, uuid.UUID, uuid.UUID | None, int | None]


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future[list[list[float]]]
    on_retry: Callable[[int, str], Awaitable[None]] | None


@dataclass
class _Lane:
    """Requests for one (model, input type, organization, user, retries): merged into shared
    calls."""

    queue: deque[_Request] = field(default_factory=deque)
    running: int = 0


class Embedder:
    """Calls to the llm, retried with backoff on outages (connection errors, 429, 5xx); a
    refusal (another 4xx) fails at once.

    Concurrent requests are merged: while a call of one lane (same model, organization, user
    and retries) is in flight, the requests arriving queue up and leave together as one call
    of up to ``RAG_EMBED_BATCH_SIZE`` texts when it returns. A lone
    request goes at once (no added latency); under load, sixteen searches' queries make one
    forward pass of the model instead of sixteen, and concurrent ingestion jobs fill whole
    batches. One process holds one Embedder (app state, worker context)."""

    # calls in flight per lane: one, so what arrives meanwhile makes the next batch (with two,
    # a closed loop of sixteen searches alternated lone queries with big batches)
    PARALLEL = 1

    def __init__(self, http: httpx.AsyncClient, settings: RagSettings) -> None:
        self.http = http
        self.settings = settings
        self._lanes: dict[Key, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # the model each alias was last served by (the llm's answer names it): /answer's
        # relevance threshold depends on it
        self.served: dict[str, str] = {}

    def _headers(self, org_id: uuid.UUID, user_id: uuid.UUID | None) -> dict[str, str]:
        who = Principal(org_id=org_id, user_id=user_id, scopes=[Scope.LLM_USE.value])
        token = sign_internal_token(who, self.settings.internal_token_secret)
        return {INTERNAL_HEADER: token}

    async def embed(
        self,
        texts: list[str],
        *,
        model: str,
        input_type: str,
        org_id: uuid.UUID,
        user_id: uuid.UUID | None = None,
        retries: int | None = None,
        on_retry: Callable[[int, str], Awaitable[None]] | None = None,
    ) -> list[list[float]]:
        """One vector per text, in order. ``input_type``: ``passage`` (chunks being indexed)
        or ``query`` (what is searched for): models such as multilingual-e5-small embed them
        apart; the llm ignores it for the others."""
        key = (model, input_type, org_id, user_id, retries)
        lane = self._lanes.setdefault(key, _Lane())
        loop = asyncio.get_running_loop()
        size = self.settings.embed_batch_size
        futures = []
        for i in range(0, len(texts), size):
            request = _Request(texts[i : i + size], loop.create_future(), on_retry)
            lane.queue.append(request)
            futures.append(request.future)
        self._pump(key, lane)
        out: list[list[float]] = []
        for part in await asyncio.gather(*futures):
            out.extend(part)
        return out

    def _pump(self, key: Key, lane: _Lane) -> None:
        size = self.settings.embed_batch_size
        while lane.queue and lane.running < self.PARALLEL:
            batch = [lane.queue.popleft()]
            total = len(batch[0].texts)
            while lane.queue and total + len(lane.queue[0].texts) <= size:
                total += len(lane.queue[0].texts)
                batch.append(lane.queue.popleft())
            lane.running += 1
            task = asyncio.create_task(self._send(key, lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self,
        key: Key,
        lane: _Lane,
        batch: list[_Request],
    ) -> None:
        callbacks = [r.on_retry for r in batch if r.on_retry is not None]

        async def on_retry(attempt: int, reason: str) -> None:
            for cb in callbacks:
                try:
                    await cb(attempt, reason)
                except Exception as exc:  # one caller's report (a job cancelled) is its own
                    log.debug("retry callback failed: %s", exc)

        texts = [t for r in batch for t in r.texts]
        try:
            vectors = await self._call(texts, key, on_retry)
        except BaseException as exc:
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(
                        exc if isinstance(exc, Exception) else EmbeddingError("cancelled")
                    )
            if not isinstance(exc, Exception):
                raise
        else:
            pos = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(vectors[pos : pos + len(r.texts)])
                pos += len(r.texts)
        finally:
            lane.running -= 1
            if lane.queue:
                self._pump(key, lane)
            elif not lane.running:
                self._lanes.pop(key, None)

    async def _call(
        self,
        texts: list[str],
        key: Key,
        on_retry: Callable[[int, str], Awaitable[None]] | None,
    ) -> list[list[float]]:
        model, input_type, org_id, user_id, retries = key
        tries = (self.settings.embed_retries if retries is None else retries) + 1
        delay = self.settings.embed_backoff_s
        last = ""
        for attempt in range(1, tries + 1):
            try:
                resp = await self.http.post(
                    f"{self.settings.llm_url.rstrip('/')}/v1/embeddings",
                    json={
                        "model": model,
                        "input": texts,
                        # little-endian float32 in base64: a quarter of the bytes of JSON
                        # floats, and decoded in C instead of parsed number by number
                        "encoding_format": "base64",
                        "input_type": input_type,
                    },
                    headers=self._headers(org_id, user_id),
                    timeout=self.settings.embed_timeout_s,
                )
            except httpx.HTTPError as exc:
                last = f"the llm service could not be reached ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code == 200:
                    body = resp.json()
                    if isinstance(body.get("model"), str):
                        self.served[model] = body["model"]
                    return _vectors(body, len(texts))
                detail = _error_message(resp)
                if resp.status_code == 402 and _error_code(resp) == "account_frozen":
                    raise AccountFrozen()  # the organization's, not the model's: said so
                if resp.status_code != 429 and resp.status_code < 500:
                    raise EmbeddingError(
                        f"the embedding model '{model}' refused the request: {detail}",
                        refused=True,
                    )
                last = f"the embedding provider answered {resp.status_code}: {detail}"
            if attempt < tries:
                log.warning("embedding failed (try %d of %d): %s", attempt, tries, last)
                if on_retry is not None:
                    await on_retry(attempt, last)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        raise EmbeddingError(f"embedding provider unavailable after {tries} tries: {last}")


def _error_message(resp: httpx.Response) -> str:
    try:
        body: Any = resp.json()
        return str(body["error"]["message"])[:300]
    except Exception:
        return resp.text[:300] or resp.reason_phrase


def _error_code(resp: httpx.Response) -> str | None:
    try:
        return str(resp.json()["error"]["code"])
    except Exception:
        return None


def _vectors(body: Any, n: int) -> list[list[float]]:
    data = sorted(body["data"], key=lambda d: d["index"])
    if len(data) != n:
        raise EmbeddingError(f"the embedding model returned {len(data)} vectors for {n} texts")
    return [_floats(d["embedding"]) for d in data]


def _floats(value: Any) -> list[float]:
    """An embedding as floats: base64 of little-endian float32 (asked for), or a JSON list."""
    if not isinstance(value, str):
        return list(map(float, value))
    packed = array.array("f", base64.b64decode(value))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()
