"""Job types: what the workers declared, as users see them; validating a job's arguments.

The jobs service never imports another service: workers publish their declarations to Redis
(:data:`libs.queue.names.TYPES_KEY`, see :mod:`libs.queue.types`) and :func:`sync_job_types`
(run by the jobs worker's reconciler) keeps them in ``jobs.job_types``, so the API answers from
PostgreSQL, also while Redis has lost them and no worker has published again yet.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.errors import Forbidden, NotFound, ValidationFailed
from libs.identity import Principal
from libs.permissions import Scope
from libs.queue.names import TYPES_KEY
from services.jobs.models import JobType
from services.jobs.types.repository import JobTypeRepository

log = logging.getLogger("aistack.jobs.types")


def split_type(name: str) -> tuple[str, str]:
    """``"<service>.<name>"`` → ``(service, name)``; 404 for anything else."""
    service, dot, fn = name.partition(".")
    if not dot or not service or not fn:
        raise NotFound(f"Unknown job type {name!r}", code="job_type_not_found")
    return service, fn


def type_out(row: JobType) -> dict[str, Any]:
    spec = dict(row.spec)
    return {
        **spec,
        "type": f"{row.service}.{row.name}",
        "service": row.service,
        "name": row.name,
        "args_schema": spec.get("args_schema") or {"type": "object"},
        "user_startable": row.user_startable,
        "scope": spec.get("scope") or Scope.JOBS_WRITE.value,
        "schedulable": row.schedulable,
        "priority": spec.get("priority") or "normal",
        "published_at": row.published_at,
    }


def validate_arguments(row: JobType, arguments: dict[str, Any]) -> None:
    """422 naming each argument that does not match the type's JSON Schema."""
    schema = (row.spec or {}).get("args_schema") or {"type": "object"}
    try:
        validator = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    except SchemaError:
        log.warning("job type %s.%s published an invalid argument schema", row.service, row.name)
        return
    if not errors:
        return
    details = []
    for err in errors:
        path = [str(p) for p in err.absolute_path]
        if err.validator in ("required", "additionalProperties") and isinstance(
            err.validator_value, list | bool
        ):
            # the field named in the message ('x' is a required property)
            named = _named_field(err.message)
            if named:
                path.append(named)
        details.append(
            {
                "field": ".".join(["body", "arguments", *path]),
                "message": err.message,
                "type": str(err.validator),
            }
        )
    first = details[0]["field"].removeprefix("body.")
    raise ValidationFailed(f"Invalid job arguments: {first}", details=details)


def _named_field(message: str) -> str | None:
    # jsonschema: "'x' is a required property" / "Additional properties are not allowed
    # ('y' was unexpected)"
    if "'" not in message:
        return None
    return message.split("'")[1]


class JobTypeService:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.repo = JobTypeRepository(session)
        self.principal = principal

    def _visible(self, row: JobType) -> bool:
        return not (row.spec or {}).get("internal") or self.principal.has_scope(Scope.ADMIN)

    async def list(self) -> list[dict[str, Any]]:
        return [type_out(r) for r in await self.repo.all() if self._visible(r)]

    async def get(self, name: str) -> JobType:
        service, fn = split_type(name)
        row = await self.repo.find(service, fn)
        if row is None or not self._visible(row):
            raise NotFound(f"Unknown job type {name!r}", code="job_type_not_found")
        return row

    async def startable(self, name: str, *, scheduling: bool = False) -> JobType:
        """A type this principal may start (or schedule), else 404 / 403."""
        row = await self.get(name)
        if not row.user_startable:
            raise Forbidden(
                f"Job type {name!r} is not one users start", code="job_type_not_startable"
            )
        if scheduling and not row.schedulable:
            raise Forbidden(
                f"Job type {name!r} cannot be scheduled", code="job_type_not_schedulable"
            )
        self.principal.require_scope((row.spec or {}).get("scope") or Scope.JOBS_WRITE)
        return row


async def sync_job_types(redis: Redis, session: AsyncSession) -> int:
    """Copy the declarations workers published into ``jobs.job_types``; returns how many."""
    raw: dict[bytes, bytes] = await redis.hgetall(TYPES_KEY)  # type: ignore[misc]
    rows = []
    for field, value in raw.items():
        try:
            spec = orjson.loads(value)
            service, name = str(spec["service"]), str(spec["name"])
            published = datetime.fromisoformat(spec.pop("published_at"))
            queue = str(spec.pop("queue"))
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            log.warning("ignoring a malformed job type declaration %r", field)
            continue
        rows.append(
            {
                "service": service[:64],
                "name": name[:200],
                "queue": queue[:255],
                "spec": spec,
                "user_startable": bool(spec.get("user_startable")),
                "schedulable": bool(spec.get("schedulable")),
                "published_at": published,
            }
        )
    await JobTypeRepository(session).upsert(rows)
    return len(rows)
