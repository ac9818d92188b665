"""Which service answers a path: the prefixes of the registry (libs/registry.py), longest first."""

from __future__ import annotations

from libs.registry import ROUTES, Route

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
