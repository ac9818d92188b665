"""Job types: what a service declares about each of its job functions.

A job type is a ``@job`` function plus its declaration (:class:`JobSpec`): a description, the
JSON Schema of its arguments, whether users may start it (``POST /v1/jobs``) and with which
scope, whether it may be scheduled, its retry policy, its per-organization concurrency limit,
its priority and how much of it the jobs service records.

Discovery: a service lists its job functions in ``services/<name>/tasks.py`` (``functions``,
and ``schedules`` for periodic jobs declared in code), and packages add job types through the
``aistack.job_types`` entry point group, as llm providers are added: an entry named
``<service>`` or ``<service>.<anything>`` pointing at a list of job functions (or one) that
the worker of ``<service>`` then runs (:func:`entry_point_functions`). The jobs service never
imports a service: each worker publishes the declarations of what it runs to Redis at start
and every minute (:data:`TYPES_KEY`, :data:`SCHEDULES_KEY`), and the jobs service keeps them
in its own table.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import random
import typing
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

from libs.queue.names import DEFAULT_PRIORITY, Priority

log = logging.getLogger("aistack.queue")

ENTRY_POINT_GROUP = "aistack.job_types"
# how much of a job type the jobs service records: every job, only those that fail, or a
# share of the others (0 < rate < 1) besides every failure
Record = Literal["all", "failures"] | float


class Permanent(Exception):
    """Raise (or raise from) it in a job to fail at once, whatever the retry policy says."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed job runs again: up to ``max_tries`` tries in all, after an exponential
    backoff with jitter, for errors of ``retry_on`` (default: any) that are not
    ``give_up_on`` (nor :class:`Permanent`). A job out of tries is a dead letter."""

    max_tries: int = 5
    backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 600.0
    # each delay is drawn in [delay * (1 - jitter), delay]: retries of many jobs that failed
    # together (an upstream outage) spread out instead of arriving together again
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another try (tries left aside)."""
        if isinstance(exc, Permanent) or isinstance(exc.__cause__, Permanent):
            return False
        if self.give_up_on and isinstance(exc, self.give_up_on):
            return False
        return isinstance(exc, self.retry_on)

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before try ``attempt + 1``."""
        base = min(self.max_backoff_s, self.backoff_s * self.multiplier ** max(0, attempt - 1))
        return base * (1 - self.jitter * rand())

    def describe(self) -> dict[str, Any]:
        """The policy as JSON (what ``GET /v1/jobs/types`` shows)."""
        return {
            "max_tries": self.max_tries,
            "backoff_s": self.backoff_s,
            "multiplier": self.multiplier,
            "max_backoff_s": self.max_backoff_s,
            "jitter": self.jitter,
            "retry_on": [c.__name__ for c in self.retry_on],
            "give_up_on": [c.__name__ for c in self.give_up_on],
        }


# no declared policy: a failure is final (shown failed, retried by hand); a worker that dies
# mid-job still has it run again, up to arq's default tries
NO_RETRY = RetryPolicy(max_tries=1)


@dataclass(frozen=True, slots=True)
class Periodic:
    """A schedule declared in code: run ``function`` (a job of the same worker) on ``cron``
    (five fields, in ``timezone``); ``missed``: what a tick missed while nothing ran does
    (``skip`` it, or ``run_once`` for all of them)."""

    name: str
    cron: str
    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    missed: Literal["skip", "run_once"] = "skip"
    description: str = ""

    def describe(self, service: str) -> dict[str, Any]:
        return {
            "service": service,
            "name": self.name,
            "cron": self.cron,
            "function": self.function,
            "kwargs": self.kwargs,
            "timezone": self.timezone,
            "missed": self.missed,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class JobSpec:
    """The declaration of one job type (see the module docstring)."""

    name: str
    description: str = ""
    user_startable: bool = False
    # the scope a user needs to start it (jobs:write by default)
    scope: str | None = None
    schedulable: bool = False
    retry: RetryPolicy = NO_RETRY
    # most jobs of this type one organization may have running at once (None: no limit)
    concurrency: int | None = None
    priority: Priority = DEFAULT_PRIORITY
    record: Record = "all"
    internal: bool = False
    timeout_s: float | None = None
    args_model: type[BaseModel] | None = None

    def args_schema(self) -> dict[str, Any]:
        """JSON Schema of the arguments (an object: the job's keyword arguments)."""
        if self.args_model is None:
            return {"type": "object"}
        return self.args_model.model_json_schema()

    def describe(self, service: str) -> dict[str, Any]:
        """The declaration as JSON, as published for the jobs service."""
        return {
            "service": service,
            "name": self.name,
            "description": self.description,
            "args_schema": self.args_schema(),
            "user_startable": self.user_startable,
            "scope": self.scope,
            "schedulable": self.schedulable,
            "retry": self.retry.describe(),
            "concurrency": self.concurrency,
            "priority": self.priority,
            "record": self.record,
            "internal": self.internal,
            "timeout_s": self.timeout_s,
        }


def records(record: Record, job_id: str, failed: bool = False) -> bool:
    """Whether a job of a type recorded as ``record`` gets a row (the same answer for every
    event of one job: the share is drawn from its id)."""
    if record == "all" or failed:
        return True
    if record == "failures" or not isinstance(record, float | int):
        return False
    return zlib.crc32(job_id.encode()) / 2**32 < float(record)


def args_model_for(name: str, func: Callable[..., Any]) -> type[BaseModel] | None:
    """A pydantic model of ``func``'s keyword arguments after the context (None when they
    cannot be described: ``*args``, a parameter without annotation, an unresolvable type)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        return None
    fields: dict[str, Any] = {}
    params = list(inspect.signature(func).parameters.values())[1:]  # the JobContext
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            return None
        if p.kind == p.VAR_KEYWORD:
            continue
        if p.name not in hints:
            return None
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints[p.name], default)
    try:
        return create_model(
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
    except Exception:
        return None


def spec_of(function: Any) -> JobSpec | None:
    """The declaration a ``@job`` function carries (None for a plain arq function)."""
    spec = getattr(function, "spec", None)
    return spec if isinstance(spec, JobSpec) else None


def entry_point_functions(service: str) -> list[Any]:
    """Job functions other packages add to ``service``'s worker: entry points of
    :data:`ENTRY_POINT_GROUP` named ``<service>`` or ``<service>.<anything>`` (only those are
    imported, so a worker loads no other service's code)."""
    found: list[Any] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != service and not ep.name.startswith(f"{service}."):
            continue
        try:
            loaded = ep.load()
        except Exception:
            log.exception("job types entry point %s (%s) failed to load", ep.name, ep.value)
            continue
        items = loaded if isinstance(loaded, Sequence) and not isinstance(loaded, str) else [loaded]
        found.extend(items)
    return found


def replace(spec: JobSpec, **changes: Any) -> JobSpec:
    """A copy of ``spec`` with ``changes``."""
    return dataclasses.replace(spec, **changes)
