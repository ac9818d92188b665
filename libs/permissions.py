"""The one permission table: organization roles and the scopes each grants.

API keys carry explicit scopes; user tokens carry the scopes of their role in the active
organization. Every service checks scopes through :class:`libs.identity.Principal`.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Scope(StrEnum):
    LLM_USE = "llm:use"
    RAG_READ = "rag:read"
    RAG_WRITE = "rag:write"
    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    BILLING_READ = "billing:read"
    ADMIN = "admin"


ALL_SCOPES: frozenset[str] = frozenset(s.value for s in Scope)

_WORK = frozenset(
    {
        Scope.LLM_USE,
        Scope.RAG_READ,
        Scope.RAG_WRITE,
        Scope.JOBS_READ,
        Scope.JOBS_WRITE,
        Scope.BILLING_READ,
    }
)

ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.OWNER: ALL_SCOPES,
    Role.ADMIN: ALL_SCOPES,
    Role.MEMBER: frozenset(s.value for s in _WORK),
    Role.VIEWER: frozenset({Scope.RAG_READ.value, Scope.JOBS_READ.value, Scope.BILLING_READ.value}),
}

# a role may grant or change only roles at or below its own rank
ROLE_RANK: dict[Role, int] = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


def scopes_for_roles(roles: list[str]) -> list[str]:
    """The union of the scopes granted by ``roles`` (unknown roles grant nothing), sorted."""
    granted: set[str] = set()
    for name in roles:
        try:
            granted |= ROLE_SCOPES[Role(name)]
        except ValueError:
            continue
    return sorted(granted)
