"""Feature flags, readable by every service from Redis without an HTTP call.

The auth service owns the flags (admin API, Postgres). Contract in Redis:

- ``aistack:flags:defs``: a hash, one field per flag key, its value the JSON definition
  ``{"enabled", "rollout_percentage", "org_overrides"}``. Auth rewrites it on startup and
  updates one field on every change.
- ``aistack:flags:version``: an integer bumped with every change (in the same MULTI as the
  definitions), so evaluated sets cached under an older version are never read again.
- ``aistack:flags:<version>:<org id>``: the evaluated set of one organization, JSON
  ``{"<key>": true|false}``, cached for a short while by whoever evaluated it first.

Evaluation (per-org override, else the global switch with a stable percentage rollout by
org) lives here only; auth uses it too. Readers keep what they read in-process for a few
seconds, then ask Redis for the version (one round trip) and reuse the set if it is unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from libs.identity import PrincipalDep
from libs.state import AppState

log = logging.getLogger("aistack.flags")

FLAGS_VERSION_KEY = "aistack:flags:version"
FLAGS_CACHE_PREFIX = "aistack:flags:"
FLAGS_DEFS_KEY = "aistack:flags:defs"
# how long an evaluated set stays in Redis (the version makes stale sets unreachable anyway)
EVALUATED_TTL = 30
_LOG_EVERY = 10.0


@dataclass(frozen=True)
class FlagDefinition:
    """One flag as auth stores it: a global switch, a rollout share, per-org overrides."""

    key: str
    enabled: bool = False
    # share of organizations (0-100) that get the flag when it is enabled
    rollout_percentage: int = 100
    # {"<org uuid>": true|false}: wins over the global switch and the rollout
    org_overrides: Mapping[str, bool] = field(default_factory=dict)

    def evaluate(self, org_id: uuid.UUID | str) -> bool:
        """Per-org override, else the global switch with a stable percentage rollout by org."""
        override = self.org_overrides.get(str(org_id))
        if override is not None:
            return bool(override)
        if not self.enabled:
            return False
        if self.rollout_percentage >= 100:
            return True
        # hashed with the key, so each flag's rollout reaches a different set of orgs
        digest = hashlib.sha256(f"{self.key}:{org_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % 100 < self.rollout_percentage

    def dumps(self) -> str:
        """The definition as stored in the ``aistack:flags:defs`` hash."""
        return orjson.dumps(
            {
                "enabled": self.enabled,
                "rollout_percentage": self.rollout_percentage,
                "org_overrides": dict(self.org_overrides),
            }
        ).decode()

    @classmethod
    def loads(cls, key: str, raw: bytes | str) -> FlagDefinition:
        """Parse a definition read from the ``aistack:flags:defs`` hash."""
        data = orjson.loads(raw)
        return cls(
            key=key,
            enabled=bool(data.get("enabled", False)),
            rollout_percentage=int(data.get("rollout_percentage", 100)),
            org_overrides={str(k): bool(v) for k, v in (data.get("org_overrides") or {}).items()},
        )


def evaluate_all(definitions: Iterable[FlagDefinition], org_id: uuid.UUID | str) -> dict[str, bool]:
    """Every flag's value for one organization."""
    return {d.key: d.evaluate(org_id) for d in definitions}


def evaluated_key(version: int, org_id: uuid.UUID | str) -> str:
    """Where one organization's evaluated flags are cached for a flags version."""
    return f"{FLAGS_CACHE_PREFIX}{version}:{org_id}"


# ------------------------------------------------------------------ writing (auth only)


async def publish_flag(redis: Redis, key: str, definition: FlagDefinition | None) -> None:
    """Store (or with ``None`` remove) one definition and bump the version, atomically."""
    pipe = redis.pipeline(transaction=True)
    if definition is None:
        pipe.hdel(FLAGS_DEFS_KEY, key)
    else:
        pipe.hset(FLAGS_DEFS_KEY, key, definition.dumps())
    pipe.incr(FLAGS_VERSION_KEY)
    await pipe.execute()


async def publish_all(
    redis: Redis, load: Callable[[], Awaitable[Iterable[FlagDefinition]]], attempts: int = 5
) -> int:
    """Replace every definition with what ``load`` returns (auth's startup), bump the version.

    The version is watched while ``load`` runs: a change published meanwhile by another
    process makes this retry, so a slow startup cannot overwrite a newer definition.
    Returns the number of flags published.
    """
    for _ in range(attempts):
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(FLAGS_VERSION_KEY)
            definitions = list(await load())
            pipe.multi()
            pipe.delete(FLAGS_DEFS_KEY)
            if definitions:
                pipe.hset(FLAGS_DEFS_KEY, mapping={d.key: d.dumps() for d in definitions})
            pipe.incr(FLAGS_VERSION_KEY)
            try:
                await pipe.execute()
            except WatchError:
                continue
            return len(definitions)
    raise RuntimeError("feature flag definitions kept changing while being published")


async def definitions_published(redis: Redis) -> bool:
    """Whether the definitions hash exists (it does as soon as one flag is defined)."""
    return bool(await redis.exists(FLAGS_DEFS_KEY))


# ---------------------------------------------------------------------------- reading


@dataclass
class _Entry:
    version: int
    flags: dict[str, bool]
    fresh_until: float


class FlagReader:
    """Evaluated flags per organization, kept in-process for ``ttl`` seconds.

    After ``ttl`` one GET of the version decides whether the kept set still holds; a new
    version reads the shared evaluated set, or evaluates the definitions and shares it.
    When Redis cannot be reached the last known set is used (or none: defaults apply),
    and the failure is logged.
    """

    def __init__(self, *, ttl: float = 3.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._logged_at = float("-inf")

    def clear(self) -> None:
        """Forget everything kept in-process."""
        self._entries.clear()

    async def flags_for(self, redis: Redis, org_id: uuid.UUID | str) -> dict[str, bool]:
        """Every flag's value for ``org_id`` (a copy: callers may change it)."""
        org = str(org_id)
        now = time.monotonic()
        entry = self._entries.get(org)
        if entry is not None and entry.fresh_until > now:
            return dict(entry.flags)
        try:
            version = int(await redis.get(FLAGS_VERSION_KEY) or 0)
            if entry is not None and entry.version == version:
                entry.fresh_until = now + self.ttl
                return dict(entry.flags)
            flags = await self._load(redis, version, org)
        except (RedisError, OSError) as exc:
            if now - self._logged_at >= _LOG_EVERY:
                self._logged_at = now
                log.error("feature flags unavailable (Redis: %s); using last known values", exc)
            return dict(entry.flags) if entry is not None else {}
        self._keep(org, _Entry(version, flags, now + self.ttl))
        return dict(flags)

    async def is_enabled(
        self, redis: Redis, org_id: uuid.UUID | str, key: str, default: bool = False
    ) -> bool:
        """One flag's value for ``org_id``; ``default`` when no such flag is defined."""
        return (await self.flags_for(redis, org_id)).get(key, default)

    async def _load(self, redis: Redis, version: int, org: str) -> dict[str, bool]:
        cache_key = evaluated_key(version, org)
        cached = await redis.get(cache_key)
        if cached is not None:
            shared: dict[str, Any] = orjson.loads(cached)
            return {str(k): bool(v) for k, v in shared.items()}
        raw: dict[bytes, bytes] = await redis.hgetall(FLAGS_DEFS_KEY)  # type: ignore[misc]
        definitions = [FlagDefinition.loads(_text(k), v) for k, v in raw.items()]
        flags = evaluate_all(definitions, org)
        await redis.set(cache_key, orjson.dumps(flags), ex=EVALUATED_TTL)
        return flags

    def _keep(self, org: str, entry: _Entry) -> None:
        if len(self._entries) >= self.max_entries and org not in self._entries:
            now = time.monotonic()
            self._entries = {o: e for o, e in self._entries.items() if e.fresh_until > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[org] = entry


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


default_reader = FlagReader()


async def flags_for(redis: Redis, org_id: uuid.UUID | str) -> dict[str, bool]:
    """Every feature flag's value for an organization (cached in-process for a few seconds)."""
    return await default_reader.flags_for(redis, org_id)


async def is_enabled(
    redis: Redis, org_id: uuid.UUID | str, key: str, default: bool = False
) -> bool:
    """One feature flag's value for an organization; ``default`` when it is not defined."""
    return await default_reader.is_enabled(redis, org_id, key, default)


async def get_flags(request: Request, principal: PrincipalDep) -> dict[str, bool]:
    """The flags of the caller's active organization (none without one)."""
    if principal.org_id is None:
        return {}
    return await flags_for(AppState.of(request).redis, principal.org_id)


FlagsDep = Annotated[dict[str, bool], Depends(get_flags)]
