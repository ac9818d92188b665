"""Cited answers: retrieve, then ask the chat model with numbered sources, streamed.

The chunks found are numbered [1]..[n] and given to the model with the instruction to answer
only from them and to cite each statement with its number; the answer's ``[n]`` markers map to
the ``citations`` sent first. When nothing relevant is found (no chunk shares a word with the
question and none is similar enough: ``RAG_ANSWER_MIN_SIMILARITY``), the model is not asked
at all: the answer says so (``found: false``) instead of being invented. The llm is called as
the organization (a signed internal token), so routing, limits and usage apply as to any chat.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from libs.errors import BadGateway, BadRequest, ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.permissions import Scope
from services.rag.search.repository import Hit
from services.rag.search.schemas import SearchRequest
from services.rag.search.service import SearchService, render_hit
from services.rag.settings import RagSettings

log = logging.getLogger("aistack.rag.answers")
CITE = re.compile(r"\[(\d{1,2})\]")
SYSTEM = (
    "You answer questions using only the numbered sources given. After each statement, cite "
    "the sources it comes from as [1], [2] and so on. If the sources do not contain the "
    "answer, say that you could not find it in the knowledge base; never invent facts. "
    "Answer in the language of the question."
)
NOTHING = {
    "zh": "知识库中没有找到与该问题相关的内容。",
    "en": "I could not find anything about this in the knowledge base.",
}


def nothing_found(question: str) -> str:
    return NOTHING["zh"] if re.search(r"[\u4e00-\u9fff]", question) else NOTHING["en"]


def relevant(hits: list[Hit], min_similarity: float) -> list[Hit]:
    """The hits worth showing a model: sharing a word with the question, or close enough."""
    return [
        h
        for h in hits
        if (h.keyword_rank is not None and h.keyword_rank > 0)
        or (h.similarity is not None and h.similarity >= min_similarity)
    ]


def citations(hits: list[Hit]) -> list[dict[str, Any]]:
    out = []
    for i, h in enumerate(hits, start=1):
        c = render_hit(h)
        out.append(
            {
                "index": i,
                "file_id": c["file_id"],
                "filename": c["filename"],
                "vector_store_id": c["vector_store_id"],
                "score": c["score"],
                "attributes": c["attributes"],
                "text": h.text,
            }
        )
    return out


def prompt(question: str, hits: list[Hit]) -> list[dict[str, str]]:
    sources = "\n\n".join(f"[{i}] ({h.filename})\n{h.text}" for i, h in enumerate(hits, start=1))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"},
    ]


def cited(answer: str, n: int) -> list[int]:
    return sorted({int(m) for m in CITE.findall(answer) if 1 <= int(m) <= n})


class AnswerService:
    def __init__(
        self,
        search: SearchService,
        http: httpx.AsyncClient,
        settings: RagSettings,
        principal: Principal,
    ) -> None:
        self.search = search
        self.http = http
        self.settings = settings
        self.principal = principal

    async def retrieve(
        self, store_public_id: str, query: str, limit: int, mode: str, filters: Any
    ) -> list[Hit]:
        stores = await self.search.stores([store_public_id])
        request = SearchRequest(query=query, max_num_results=limit, mode=mode, filters=filters)
        hits = await self.search.search(stores, request)
        served = self.search.embedder.served.get(stores[0].embedding_model, "")
        by_model = self.settings.answer_min_similarity_by_model
        return relevant(hits, by_model.get(served, self.settings.answer_min_similarity))

    def _headers(self) -> dict[str, str]:
        who = Principal(
            org_id=self.principal.org_id,
            user_id=self.principal.user_id,
            key_id=self.principal.key_id,
            scopes=[Scope.LLM_USE.value],
            plan=self.principal.plan,
        )
        return {INTERNAL_HEADER: sign_internal_token(who, self.settings.internal_token_secret)}

    def _body(
        self, model: str, messages: list[dict[str, str]], opts: dict[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body.update({k: v for k, v in opts.items() if v is not None})
        return body

    async def tokens(
        self,
        model: str,
        messages: list[dict[str, str]],
        opts: dict[str, Any],
        usage: dict[str, int],
    ) -> AsyncIterator[str]:
        """The answer's text as the chat model streams it (``usage`` filled at the end)."""
        url = f"{self.settings.llm_url.rstrip('/')}/v1/chat/completions"
        timeout = httpx.Timeout(self.settings.answer_timeout_s, connect=5.0)
        try:
            async with self.http.stream(
                "POST",
                url,
                json=self._body(model, messages, opts),
                headers=self._headers(),
                timeout=timeout,
            ) as resp:
                if resp.status_code != 200:
                    raw = await resp.aread()
                    raise _llm_error(resp.status_code, raw)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        continue
                    if chunk.get("usage"):
                        usage.update(
                            {k: int(v) for k, v in chunk["usage"].items() if isinstance(v, int)}
                        )
                    if "error" in chunk:
                        raise BadGateway(
                            str(chunk["error"].get("message", "the model failed"))[:300]
                        )
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"The chat model could not be reached: {type(exc).__name__}",
                code="llm_unavailable",
                headers={"retry-after": "5"},
            ) from exc


def _llm_error(status: int, raw: bytes) -> Exception:
    try:
        message = str(orjson.loads(raw)["error"]["message"])[:300]
    except Exception:
        message = raw[:300].decode("utf-8", "replace")
    if status in (429, 503):
        return ServiceUnavailable(
            f"The chat model is unavailable: {message}", code="llm_unavailable"
        )
    if status < 500:  # an unknown model, a parameter it refuses: the caller's to fix
        return BadRequest(f"The chat model refused the request: {message}", code="llm_refused")
    return BadGateway(f"The chat model failed ({status}): {message}", code="llm_error")
