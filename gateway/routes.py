"""The gateway's one route table: which service answers which path prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    """A path prefix owned by one service, with what the gateway enforces in front of it."""

    prefix: str
    service: str
    # no principal required (sign-in, JWKS, ...)
    public: bool = False
    # scope the caller needs for this prefix (None: any authenticated caller)
    scope: str | None = None
    # scope needed instead for writes (POST/PUT/PATCH/DELETE), e.g. rag:write
    write_scope: str | None = None
    # POSTs to a path ending in one of these segments only read (search, query, ...)
    read_actions: tuple[str, ...] = ()
    # errors rendered in OpenAI's shape so its SDKs parse them
    openai: bool = False

    @property
    def path(self) -> str:
        """Route label for metrics (read by the observability middleware)."""
        return self.prefix

    def required_scope(self, method: str, path: str) -> str | None:
        """The scope a request with ``method`` on ``path`` needs."""
        if self.write_scope is None or method not in WRITE_METHODS:
            return self.scope
        if method == "POST" and path.rstrip("/").rsplit("/", 1)[-1] in self.read_actions:
            return self.scope
        return self.write_scope


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_RAG_READS = ("query", "search", "retrieve", "answer", "ask", "evaluate")


ROUTES: tuple[Route, ...] = (
    Route("/v1/auth", "auth", public=True),
    Route("/v1/api-keys", "auth"),
    Route("/v1/orgs", "auth"),
    Route("/v1/users", "auth"),
    Route("/v1/admin", "auth", scope="admin", write_scope="admin"),
    Route("/.well-known/jwks.json", "auth", public=True),
    Route("/v1/chat", "llm", scope="llm:use", openai=True),
    Route("/v1/completions", "llm", scope="llm:use", openai=True),
    Route("/v1/embeddings", "llm", scope="llm:use", openai=True),
    Route("/v1/models", "llm", scope="llm:use", openai=True),
    Route("/v1/responses", "llm", scope="llm:use", openai=True),
    Route("/v1/prompts", "llm", scope="llm:use"),
    Route("/v1/conversations", "llm", scope="llm:use"),
    Route(
        "/v1/knowledge-bases",
        "rag",
        scope="rag:read",
        write_scope="rag:write",
        read_actions=_RAG_READS,
    ),
    Route("/v1/jobs", "jobs", scope="jobs:read", write_scope="jobs:write"),
    # marking one's own notifications read needs no more than reading them
    Route("/v1/notifications", "jobs", scope="jobs:read"),
    Route("/v1/billing", "billing", scope="billing:read", write_scope="admin"),
    # Stripe cannot present aistack credentials; billing checks the webhook signature
    Route("/v1/billing/webhooks", "billing", public=True),
)

# longest prefix first, so a more specific entry always wins
_ORDERED = tuple(sorted(ROUTES, key=lambda r: len(r.prefix), reverse=True))
_PREFIXES = tuple((r.prefix, r.prefix + "/", r) for r in _ORDERED)


def match_route(path: str) -> Route | None:
    """The route owning ``path`` (exact prefix or below it), or None.

    Paths with dot segments are never matched: the upstream client would normalise them and
    ``/v1/chat/../../internal/x`` must not reach an internal route. Nor are paths with a
    backslash: a client following the URL standard reads it as a slash (``/v1/chat/..\\x``).
    """
    if "\\" in path or ("/." in path and _has_dot_segment(path)):
        return None
    if path == "/internal" or path.startswith(("/internal/", "//")):
        # service-to-service routes are never reachable from outside
        return None
    for prefix, below, route in _PREFIXES:
        if path == prefix or path.startswith(below):
            return route
    return None


def _has_dot_segment(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/"))


def openai_prefixes() -> tuple[str, ...]:
    """Prefixes whose errors use OpenAI's shape."""
    return tuple(r.prefix for r in ROUTES if r.openai)
