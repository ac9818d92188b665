"""The Responses API's ``file_search`` tool, for every model aistack routes.

aistack searches before the model answers, once per request, with this turn's last user
message as the query, plus the user's message before it when the last one is a short
follow-up ("and for meals?"), so the search knows what it is about (no model has to decide to
call the tool, so the local model gets it too): rag's ``POST /internal/search`` over the
tool's stores, as the caller's organization. ``tool_choice`` and ``max_tool_calls`` are
honoured as OpenAI's model would be bound by them: no search with ``tool_choice: "none"``,
a choice naming another tool (a function), or ``max_tool_calls: 0``.
The chunks found go into the user's message as numbered sources ``[1]``, ``[2]``... with the
instruction to cite them so, as much as fits in half the model's context window. The answer's
``[n]`` markers become ``file_citation`` annotations (the file of source n, ``index`` where
the marker is); an answer without a valid marker (a small model rarely writes them) cites
the files of the sources it was given, best first, at the end of its text: retrieval decides
the citations then. The response's output starts with a ``file_search_call`` item (``fs_``
id, ``queries``, ``results`` only with ``include=["file_search_call.results"]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from libs.errors import AppError, NotFound, ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from services.llm.chat.schemas import invalid_param
from services.llm.responses.schemas import ResponsesRequest
from services.llm.tokens.tokenizer import utf8_len

INCLUDE_RESULTS = "file_search_call.results"
_MARKER = re.compile(r"\[(\d{1,2})\]")
_INSTRUCTION = (
    "Answer the question below from these sources. After each fact, cite its source "
    "number in brackets, like [1]. If the sources do not answer it, say so."
)


@dataclass
class FileSearchTool:
    """One ``{"type": "file_search", ...}`` tool of the request, checked."""

    vector_store_ids: list[str]
    max_num_results: int = 20
    filters: dict[str, Any] | None = None
    ranking_options: dict[str, Any] | None = None

    @classmethod
    def parse(cls, tool: dict[str, Any], i: int) -> FileSearchTool:
        where = f"tools[{i}]"
        ids = tool.get("vector_store_ids")
        if (
            not isinstance(ids, list)
            or not 1 <= len(ids) <= 20
            or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in ids)
        ):
            raise invalid_param(
                f"{where}.vector_store_ids must list 1 to 20 vector store ids",
                f"{where}.vector_store_ids",
            )
        n = tool.get("max_num_results", 20)
        if n is None:
            n = 20
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 50:
            raise invalid_param(
                f"{where}.max_num_results must be an integer from 1 to 50",
                f"{where}.max_num_results",
            )
        for key in ("filters", "ranking_options"):
            if tool.get(key) is not None and not isinstance(tool[key], dict):
                raise invalid_param(f"{where}.{key} must be an object", f"{where}.{key}")
        return cls(list(ids), n, tool.get("filters"), tool.get("ranking_options"))

    def search_body(self, query: str | list[str]) -> dict[str, Any]:
        """The body of rag's ``/internal/search`` (OpenAI's ranking options in rag's terms)."""
        body: dict[str, Any] = {
            "vector_store_ids": self.vector_store_ids,
            "query": query,
            "max_num_results": self.max_num_results,
        }
        if self.filters is not None:
            body["filters"] = self.filters
        ranking = dict(self.ranking_options or {})
        hybrid = ranking.pop("hybrid_search", None)
        if isinstance(hybrid, dict):
            if hybrid.get("embedding_weight") is not None:
                body["vector_weight"] = hybrid["embedding_weight"]
            if hybrid.get("text_weight") is not None:
                body["fulltext_weight"] = hybrid["text_weight"]
        if ranking:
            body["ranking_options"] = ranking
        return body


def split_tools(
    tools: list[dict[str, Any]] | None,
) -> tuple[FileSearchTool | None, list[dict[str, Any]] | None]:
    """The request's file_search tool (at most one, as OpenAI) and its other tools."""
    if not tools:
        return None, tools
    search: FileSearchTool | None = None
    rest = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "file_search":
            if search is not None:
                raise invalid_param("Only one file_search tool is allowed", f"tools[{i}]")
            search = FileSearchTool.parse(tool, i)
        else:
            rest.append(tool)
    return search, rest or None


@dataclass
class Source:
    file_id: str
    filename: str
    text: str


@dataclass
class SearchOutcome:
    """What one search found and what of it the model was given."""

    item_id: str
    queries: list[str]
    results: list[dict[str, Any]]
    sources: list[Source] = field(default_factory=list)

    def item(self, include_results: bool, status: str = "completed") -> dict[str, Any]:
        """The ``file_search_call`` output item."""
        return {
            "id": self.item_id,
            "type": "file_search_call",
            "status": status,
            "queries": self.queries,
            "results": (
                [
                    {
                        "file_id": r.get("file_id"),
                        "filename": r.get("filename"),
                        "score": r.get("score"),
                        "attributes": r.get("attributes") or {},
                        "text": _text(r),
                    }
                    for r in self.results
                ]
                if include_results
                else None
            ),
        }

    def prompt(self, question: str, budget: int) -> str | None:
        """The user's message with the sources before it (None when nothing was found);
        sources are given whole, best first, while their UTF-8 size (a bound on their tokens)
        fits ``budget``; the first is cut to fit rather than left out."""
        parts: list[str] = []
        used = 0
        for r in self.results:
            text = _text(r).strip()
            name = str(r.get("filename") or r.get("file_id") or "")
            entry = f"[{len(parts) + 1}] ({name}) {text}"
            size = utf8_len(entry) + 2
            if used + size > budget:
                if parts:
                    break
                entry = entry.encode()[: max(budget - 2, 0)].decode("utf-8", "ignore")
                size = budget
            parts.append(entry)
            self.sources.append(Source(str(r.get("file_id") or ""), name, text))
            used += size
        if not parts:
            return None
        return "Sources:\n" + "\n\n".join(parts) + f"\n\n{_INSTRUCTION}\n\nQuestion: {question}"

    def annotations(self, text: str) -> list[dict[str, Any]]:
        """``file_citation`` annotations of an answer: its ``[n]`` markers, or the files of
        the sources it was given when it wrote none."""
        out = []
        for match in _MARKER.finditer(text):
            n = int(match.group(1))
            if 1 <= n <= len(self.sources):
                out.append(_citation(self.sources[n - 1], match.start()))
        if out or not text:
            return out
        seen: set[str] = set()
        for source in self.sources:
            if source.file_id not in seen:
                seen.add(source.file_id)
                out.append(_citation(source, len(text)))
        return out


def _citation(source: Source, index: int) -> dict[str, Any]:
    return {
        "type": "file_citation",
        "file_id": source.file_id,
        "filename": source.filename,
        "index": index,
    }


def _text(result: dict[str, Any]) -> str:
    return "".join(
        str(c.get("text") or "") for c in result.get("content") or [] if isinstance(c, dict)
    )


def last_user_text(messages: list[dict[str, Any]]) -> tuple[int, str] | None:
    """The index and text of the last user message (its text parts joined)."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return i, content
        if isinstance(content, list):
            return i, " ".join(str(p.get("text") or "") for p in content if p.get("type") == "text")
    return None


# a follow-up this short (words; a CJK character counts half) is searched with the message
# before it; that message's last characters at most are added
SHORT_WORDS = 8
CONTEXT_CHARS = 1000
_WORDS = re.compile(r"[^\W\d_]+|\d+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def searches(body: ResponsesRequest) -> bool:
    """Whether the file_search runs for this request, as OpenAI's model could call it: not
    with ``max_tool_calls`` 0, ``tool_choice`` none, or a choice naming another tool."""
    if body.max_tool_calls == 0:
        return False
    choice = body.tool_choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "allowed_tools":
            tools = choice.get("tools")
            return isinstance(tools, list) and any(
                isinstance(t, dict) and t.get("type") == "file_search" for t in tools
            )
        return bool(kind == "file_search")
    return choice != "none"


def search_queries(question: str, earlier: list[dict[str, Any]]) -> list[str]:
    """The queries for ``question``: itself, and the user's previous message (from
    ``earlier`` messages) when the question is short, as a follow-up is."""
    cjk = len(_CJK.findall(question))
    words = len(_WORDS.findall(_CJK.sub(" ", question))) + cjk / 2
    if words >= SHORT_WORDS:
        return [question]
    before = last_user_text(earlier)
    if before is None or not before[1].strip() or before[1].strip() == question.strip():
        return [question]
    return [question, before[1].strip()[-CONTEXT_CHARS:]]


def with_sources(message: dict[str, Any], prompt: str) -> dict[str, Any]:
    """``message`` (a user's) with its text replaced by ``prompt`` (images kept)."""
    content = message.get("content")
    if isinstance(content, list):
        images = [p for p in content if p.get("type") != "text"]
        return {**message, "content": [{"type": "text", "text": prompt}, *images]}
    return {**message, "content": prompt}


class RagSearch:
    """rag's ``POST /internal/search`` as the caller's organization."""

    def __init__(self, http: httpx.AsyncClient, rag_url: str, secret: str) -> None:
        self.http = http
        self.url = rag_url.rstrip("/") + "/internal/search"
        self.secret = secret

    async def search(
        self, principal: Principal, tool: FileSearchTool, query: str | list[str], param: str
    ) -> list[dict[str, Any]]:
        """The chunks found, best first; OpenAI's errors for what rag refuses (``param``: the
        tool), a 503 when rag cannot answer."""
        token = sign_internal_token(principal, self.secret)
        try:
            resp = await self.http.post(
                self.url, json=tool.search_body(query), headers={INTERNAL_HEADER: token}
            )
        except httpx.HTTPError as exc:
            raise _unavailable(f"the knowledge base service could not be reached ({exc})") from exc
        if resp.status_code == 200:
            data = resp.json().get("data")
            return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
        message, code = _error_of(resp)
        if resp.status_code == 404:
            raise NotFound(
                message,
                code=code or "vector_store_not_found",
                details=[{"field": f"{param}.vector_store_ids", "message": message}],
            )
        if resp.status_code in (400, 422):
            raise invalid_param(message, param, code or "invalid_request")
        retry = resp.headers.get("retry-after")
        raise _unavailable(
            f"the knowledge base search failed ({resp.status_code}: {message})",
            {"retry-after": retry} if retry else None,
        )


def _unavailable(reason: str, headers: dict[str, str] | None = None) -> AppError:
    return ServiceUnavailable(
        f"file_search is unavailable: {reason}; try again later",
        code="file_search_unavailable",
        headers=headers or {"retry-after": "5"},
    )


def _error_of(resp: httpx.Response) -> tuple[str, str | None]:
    try:
        error = resp.json()["error"]
        return str(error.get("message") or resp.reason_phrase)[:500], error.get("code")
    except Exception:
        return (resp.text[:300] or resp.reason_phrase), None
