"""One OpenAPI document for the whole platform, merged from every service's own, and /docs."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.routes import match_route
from libs.registry import SERVICES

log = logging.getLogger("aistack.gateway.openapi")

_OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})
_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_REF_PREFIX = "#/components/schemas/"

SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A user access token from /v1/auth, or an API key as the bearer token.",
    },
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-key"},
}
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]


def _public_path(service: str, path: str) -> bool:
    if path in _OPS_PATHS or path == "/internal" or path.startswith("/internal/"):
        return False
    route = match_route(path.split("{", 1)[0].rstrip("/") or "/") or match_route(path)
    # only what the gateway actually routes to this service is reachable from outside
    return route is not None and route.service == service


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith(_REF_PREFIX):
                name = v[len(_REF_PREFIX) :]
                out[k] = _REF_PREFIX + renames.get(name, name)
            else:
                out[k] = _rewrite_refs(v, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node


def merge_specs(gateway_spec: dict[str, Any], specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge the services' public paths and schemas into the gateway's own document.

    Schema names two services define differently are renamed ``<service>_<Name>`` in both,
    with every ``$ref`` rewritten; identical definitions are shared.
    """
    merged = copy.deepcopy(gateway_spec)
    paths: dict[str, Any] = merged.setdefault("paths", {})
    components = merged.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for ops in paths.values():
        for method, op in ops.items():
            if method in _METHODS:
                op["tags"] = ["gateway"]
                op["security"] = []

    # a name clashes when the gateway or two services define it with different content
    seen: dict[str, list[bytes]] = {}
    for name, schema in schemas.items():
        seen.setdefault(name, []).append(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    for spec in specs.values():
        for name, schema in spec.get("components", {}).get("schemas", {}).items():
            dumped = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
            if dumped not in seen.setdefault(name, []):
                seen[name].append(dumped)
    clashing = {name for name, versions in seen.items() if len(versions) > 1}

    tags = [{"name": "gateway", "description": "The gateway's own operations."}]
    for service, spec in specs.items():
        renames = {}
        for name in spec.get("components", {}).get("schemas", {}):
            if name in clashing:
                new = f"{service}_{name}"
                while new in seen:
                    new = f"{service}_{new}"
                renames[name] = new
        service_paths = _rewrite_refs(spec.get("paths", {}), renames) if renames else spec["paths"]
        service_schemas = spec.get("components", {}).get("schemas", {})
        if renames:
            service_schemas = _rewrite_refs(service_schemas, renames)
        used_tags: list[str] = []
        for path, ops in service_paths.items():
            if not _public_path(service, path):
                continue
            route = match_route(path.split("{", 1)[0].rstrip("/")) or match_route(path)
            new_ops = {}
            for method, op in ops.items():
                if method not in _METHODS:
                    new_ops[method] = op
                    continue
                op = dict(op)
                op["tags"] = [
                    f"{service}: {t}" if t != service else service for t in op.get("tags") or []
                ] or [service]
                for t in op["tags"]:
                    if t not in used_tags:
                        used_tags.append(t)
                # internal identity is the gateway's business, not the caller's
                params = [
                    p
                    for p in op.get("parameters", [])
                    if not (
                        p.get("in") == "header"
                        and str(p.get("name", "")).lower().startswith("x-aistack-")
                    )
                ]
                if params:
                    op["parameters"] = params
                else:
                    op.pop("parameters", None)
                # the caller is needed where the gateway asks for one (a prefix that is not
                # public) or where the service does (the operation depends on the forwarded
                # principal: libs/identity.py); either way the gateway's schemes apply
                if (route is not None and not route.public) or op.get("security"):
                    op.pop("security", None)
                else:
                    op["security"] = []
                new_ops[method] = op
            paths[path] = new_ops
        for name, schema in service_schemas.items():
            schemas[renames.get(name, name)] = schema
        # the service's own tag says what the service does (the registry); a feature's tag
        # keeps what the service wrote for it, if anything, rather than repeating its parent
        own = {t["name"]: t.get("description") for t in spec.get("tags", []) if "name" in t}
        for t in used_tags:
            feature = t.split(": ", 1)[1] if t.startswith(f"{service}: ") else None
            desc = SERVICES[service].description if feature is None else own.get(feature)
            tags.append({"name": t, **({"description": desc} if desc else {})})

    components["securitySchemes"] = SECURITY_SCHEMES
    merged["security"] = SECURITY
    merged["tags"] = tags
    if not schemas:
        components.pop("schemas", None)
    return merged


class OpenAPICache:
    """Each service's document, kept for ``ttl`` seconds; a failed fetch retries next time and
    keeps serving the last good copy meanwhile."""

    def __init__(self, urls: dict[str, str], ttl: float, timeout: float) -> None:
        self.urls = urls
        self.ttl = ttl
        self.timeout = timeout
        self.specs: dict[str, dict[str, Any]] = {}
        self.fetched_at: dict[str, float] = {}
        self.failed: set[str] = set()
        self.merged: bytes | None = None
        self.lock = asyncio.Lock()

    def _stale(self, service: str, now: float) -> bool:
        at = self.fetched_at.get(service)
        return service in self.failed or at is None or now - at > self.ttl

    async def _fetch(self, client: httpx.AsyncClient, service: str) -> None:
        try:
            resp = await client.get(f"{self.urls[service]}/openapi.json", timeout=self.timeout)
            resp.raise_for_status()
            spec = resp.json()
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot fetch the %s OpenAPI document: %r", service, exc)
            self.failed.add(service)
            return
        self.specs[service] = spec
        self.fetched_at[service] = time.monotonic()
        self.failed.discard(service)
        self.merged = None

    async def document(self, client: httpx.AsyncClient, gateway_spec: dict[str, Any]) -> bytes:
        """The merged document as JSON bytes, refreshing stale parts first."""
        now = time.monotonic()
        if self.merged is not None and not any(self._stale(s, now) for s in self.urls):
            return self.merged
        async with self.lock:
            now = time.monotonic()
            stale = [s for s in self.urls if self._stale(s, now)]
            if stale:
                await asyncio.gather(*(self._fetch(client, s) for s in stale))
            if self.merged is None:
                ordered = {s: self.specs[s] for s in self.urls if s in self.specs}
                doc = merge_specs(gateway_spec, ordered)
                missing = [s for s in self.urls if s not in self.specs]
                if missing:
                    doc["info"]["x-unavailable-services"] = missing
                self.merged = orjson.dumps(doc)
            return self.merged


def swagger_assets_dir() -> Path | None:
    """Swagger UI files shipped by the ``swagger-ui-bundle-v2`` package, when installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None
