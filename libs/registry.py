"""The one registry of aistack's processes: each service's name, port, app, settings, queue and
the public path prefixes the gateway routes to it.

The gateway's route table, the migrations runner, the local runner (``make run``), the
container entry point and the README's configuration table all read it, so adding a service or
a prefix is one edit here. Modules are named by import path, never imported from libs (libs
imports no service).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.permissions import Scope


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
    # file uploads: bodies up to MAX_UPLOAD_BYTES instead of MAX_BODY_BYTES (gateway and owner)
    uploads: bool = False

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

# the llm's calls to a provider a client waits on (POST; a stream's start included): the llm
# cancels them when their client leaves before the answer, and the gateway passes a client's
# leaving on by closing its own request to the llm (libs/disconnect.py)
PROVIDER_CALLS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"}
)


@dataclass(frozen=True, slots=True)
class Service:
    """One service: where it listens by default and what it owns."""

    name: str
    port: int
    description: str
    routes: tuple[Route, ...] = ()
    # has its own PostgreSQL schema and migrations (services/<name>/migrations)
    database: bool = True

    @property
    def app(self) -> str:
        """The app factory for ``uvicorn --factory``."""
        return f"services.{self.name}.app:app"

    @property
    def settings(self) -> tuple[str, str]:
        """Module and class of the service's settings."""
        return f"services.{self.name}.settings", f"{self.name.capitalize()}Settings"

    @property
    def tasks(self) -> str:
        """The module holding the service's queue job functions (``libs.worker``)."""
        return f"services.{self.name}.tasks"

    @property
    def queue(self) -> str:
        """The service's arq queue (``libs.queue.queue_name``)."""
        return f"aistack:queue:{self.name}"


GATEWAY_PORT = 8000
_READ_ACTIONS = ("query", "search", "retrieve", "answer", "ask", "evaluate")


def _routes(service: str, *routes: tuple[str, dict[str, Any]]) -> tuple[Route, ...]:
    return tuple(Route(prefix, service, **options) for prefix, options in routes)


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service(
            "auth",
            8001,
            "Accounts, organizations, sessions, API keys, sign-in with OAuth, audit log and"
            " feature flags.",
            _routes(
                "auth",
                ("/v1/auth", {"public": True}),
                ("/v1/api-keys", {}),
                ("/v1/orgs", {}),
                ("/v1/admin", {"scope": Scope.ADMIN, "write_scope": Scope.ADMIN}),
                ("/.well-known/jwks.json", {"public": True}),
            ),
        ),
        Service(
            "llm",
            8002,
            "OpenAI-compatible chat, completions, Responses, embeddings and models over many"
            " providers; prompts and conversations.",
            _routes(
                "llm",
                *(
                    (p, {"scope": Scope.LLM_USE, "openai": True})
                    for p in (
                        "/v1/chat",
                        "/v1/completions",
                        "/v1/embeddings",
                        "/v1/models",
                        "/v1/responses",
                    )
                ),
                ("/v1/prompts", {"scope": Scope.LLM_USE}),
                ("/v1/conversations", {"scope": Scope.LLM_USE}),
            ),
        ),
        Service(
            "rag",
            8003,
            "Files (OpenAI's Files API), knowledge bases as OpenAI-compatible vector stores,"
            " ingestion (parse, chunk, embed, index) as background jobs, hybrid search and"
            " cited answers.",
            _routes(
                "rag",
                (
                    "/v1/files",
                    {
                        "scope": Scope.RAG_READ,
                        "write_scope": Scope.RAG_WRITE,
                        "openai": True,
                        "uploads": True,
                    },
                ),
                (
                    "/v1/vector_stores",
                    {
                        "scope": Scope.RAG_READ,
                        "write_scope": Scope.RAG_WRITE,
                        "read_actions": _READ_ACTIONS,
                        "openai": True,
                    },
                ),
            ),
        ),
        Service(
            "jobs",
            8004,
            "Background jobs: types, progress pushed live, cancel, retry and dead letters,"
            " schedules, fair queues and queue monitoring; OpenAI's Batch API.",
            _routes(
                "jobs",
                ("/v1/jobs", {"scope": Scope.JOBS_READ, "write_scope": Scope.JOBS_WRITE}),
                # more specific than auth's /v1/admin (the longest prefix wins); jobs also
                # asks auth whether the caller is a platform administrator
                ("/v1/admin/queues", {"scope": Scope.ADMIN, "write_scope": Scope.ADMIN}),
                # marking one's own notifications read needs no more than reading them
                ("/v1/notifications", {"scope": Scope.JOBS_READ}),
                # OpenAI's Batch API (its lines run through the llm as the caller)
                (
                    "/v1/batches",
                    {"scope": Scope.JOBS_READ, "write_scope": Scope.JOBS_WRITE, "openai": True},
                ),
                # a mail's one-click unsubscribe works without signing in (a signed token)
                ("/v1/notifications/unsubscribe", {"public": True}),
            ),
        ),
        Service(
            "billing",
            8005,
            "Usage, prices, plans and subscriptions by organization.",
            _routes(
                "billing",
                ("/v1/billing", {"scope": Scope.BILLING_READ, "write_scope": Scope.ADMIN}),
                # Stripe cannot present aistack credentials; billing checks the webhook signature
                ("/v1/billing/webhooks", {"public": True}),
            ),
        ),
    )
}

NAMES: tuple[str, ...] = tuple(SERVICES)
ROUTES: tuple[Route, ...] = tuple(r for s in SERVICES.values() for r in s.routes)
