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
    # scope an API key needs for this prefix (None: any authenticated caller)
    scope: str | None = None
    # errors rendered in OpenAI's shape so its SDKs parse them
    openai: bool = False

    @property
    def path(self) -> str:
        """Route label for metrics (read by the observability middleware)."""
        return self.prefix


ROUTES: tuple[Route, ...] = (
    Route("/v1/auth", "auth", public=True),
    Route("/v1/api-keys", "auth"),
    Route("/v1/orgs", "auth"),
    Route("/v1/users", "auth"),
    Route("/.well-known/jwks.json", "auth", public=True),
    Route("/v1/chat", "llm", scope="llm:use", openai=True),
    Route("/v1/completions", "llm", scope="llm:use", openai=True),
    Route("/v1/embeddings", "llm", scope="llm:use", openai=True),
    Route("/v1/models", "llm", scope="llm:use", openai=True),
    Route("/v1/prompts", "llm", scope="llm:use"),
    Route("/v1/conversations", "llm", scope="llm:use"),
    Route("/v1/knowledge-bases", "rag", scope="rag:read"),
    Route("/v1/jobs", "jobs", scope="jobs:read"),
    Route("/v1/notifications", "jobs", scope="jobs:read"),
    Route("/v1/billing", "billing", scope="billing:read"),
)

# longest prefix first, so a more specific entry always wins
_ORDERED = tuple(sorted(ROUTES, key=lambda r: len(r.prefix), reverse=True))
_PREFIXES = tuple((r.prefix, r.prefix + "/", r) for r in _ORDERED)


def match_route(path: str) -> Route | None:
    """The route owning ``path`` (exact prefix or below it), or None.

    Paths with dot segments are never matched: the upstream client would normalise them and
    ``/v1/chat/../../internal/x`` must not reach an internal route.
    """
    if "/." in path and _has_dot_segment(path):
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
