"""Embeddings through the llm service's ``/v1/embeddings`` (internal HTTP), as the
organization: rag signs an internal token for it, so configured providers and aliases apply and
the usage is metered to that organization."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.permissions import Scope
from services.rag.settings import RagSettings

log = logging.getLogger("aistack.rag.embed")


class EmbeddingError(Exception):
    """Embedding failed for good (after retries, or refused)."""


class Embedder:
    """Batched calls to the llm, retried with backoff on outages (connection errors, 429,
    5xx); a refusal (another 4xx) fails at once."""

    def __init__(self, http: httpx.AsyncClient, settings: RagSettings) -> None:
        self.http = http
        self.settings = settings

    def _headers(self, org_id: uuid.UUID, user_id: uuid.UUID | None) -> dict[str, str]:
        who = Principal(org_id=org_id, user_id=user_id, scopes=[Scope.LLM_USE.value])
        token = sign_internal_token(who, self.settings.internal_token_secret)
        return {INTERNAL_HEADER: token}

    async def embed(
        self,
        texts: list[str],
        *,
        model: str,
        org_id: uuid.UUID,
        user_id: uuid.UUID | None = None,
        retries: int | None = None,
        on_retry: Callable[[int, str], Awaitable[None]] | None = None,
    ) -> list[list[float]]:
        """One vector per text, in order."""
        out: list[list[float]] = []
        size = self.settings.embed_batch_size
        for i in range(0, len(texts), size):
            out.extend(
                await self._call(texts[i : i + size], model, org_id, user_id, retries, on_retry)
            )
        return out

    async def _call(
        self,
        texts: list[str],
        model: str,
        org_id: uuid.UUID,
        user_id: uuid.UUID | None,
        retries: int | None,
        on_retry: Callable[[int, str], Awaitable[None]] | None,
    ) -> list[list[float]]:
        tries = (self.settings.embed_retries if retries is None else retries) + 1
        delay = self.settings.embed_backoff_s
        last = ""
        for attempt in range(1, tries + 1):
            try:
                resp = await self.http.post(
                    f"{self.settings.llm_url.rstrip('/')}/v1/embeddings",
                    json={"model": model, "input": texts, "encoding_format": "float"},
                    headers=self._headers(org_id, user_id),
                    timeout=self.settings.embed_timeout_s,
                )
            except httpx.HTTPError as exc:
                last = f"the llm service could not be reached ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code == 200:
                    return _vectors(resp.json(), len(texts))
                detail = _error_message(resp)
                if resp.status_code != 429 and resp.status_code < 500:
                    raise EmbeddingError(
                        f"the embedding model '{model}' refused the request: {detail}"
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


def _vectors(body: Any, n: int) -> list[list[float]]:
    data = sorted(body["data"], key=lambda d: d["index"])
    if len(data) != n:
        raise EmbeddingError(f"the embedding model returned {len(data)} vectors for {n} texts")
    return [list(map(float, d["embedding"])) for d in data]
