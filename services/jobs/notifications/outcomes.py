"""The jobs service as a producer: a user's job that ended tells its owner.

A loop of the jobs worker reads the lifecycle stream (:data:`libs.queue.EVENTS_STREAM`) in its
own consumer group (beside the recorder's, which it never slows), and emits ``job.succeeded``
or ``job.failed`` (failed, or dead: out of tries) for a job that a user started in an
organization (internal and platform jobs tell nobody). The event id derives from the job and
its end, so an entry read twice (a worker that died before acknowledging) is one event.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from libs.notify import Event, JobOutcome, emit_now, make_event
from libs.queue import EVENTS_STREAM, JobEvent
from libs.storage_errors import describe

log = logging.getLogger("aistack.jobs.notifications")
GROUP = "jobs-notify"
ENDS = {"succeeded": "job.succeeded", "failed": "job.failed", "dead": "job.failed"}
# jobs whose end their own kind tells (a batch's: batch.completed / batch.failed, with counts)
TOLD_OTHERWISE = {("jobs", "run_batch")}


def outcome_event(ev: JobEvent) -> Event | None:
    """The notification event of a lifecycle event, or None when it tells nobody."""
    kind = ENDS.get(ev.status)
    if kind is None or ev.internal or not ev.user_id or not ev.org_id:
        return None
    if (ev.service, ev.function) in TOLD_OTHERWISE:
        return None
    try:
        org_id, user_id = uuid.UUID(ev.org_id), uuid.UUID(ev.user_id)
    except ValueError:
        return None
    return make_event(
        kind,
        JobOutcome(
            job_id=ev.job_id[:255],
            service=ev.service[:64],
            function=ev.function[:200],
            status=ev.status,
            error=(ev.error or None) and ev.error[:2000],
            finished_at=ev.ts,
        ),
        org_id=org_id,
        user_id=user_id,
        subject={"job_id": ev.job_id},
        key=f"{ev.job_id}:{ev.status}",
        source="jobs",
    )


class JobOutcomes:
    def __init__(self, redis: Redis, consumer: str, block_ms: int = 5000) -> None:
        self.redis = redis
        self.consumer = consumer
        self.block_ms = block_ms

    async def ensure_group(self) -> None:
        try:
            # from now on: jobs that ended before notifications existed tell nobody
            await self.redis.xgroup_create(EVENTS_STREAM, GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run_once(self, cursor: str = ">", block: int | None = None) -> int:
        """Read one batch (``0``: this consumer's pending ones), emit, acknowledge; how many
        entries were read."""
        resp = await self.redis.xreadgroup(
            GROUP, self.consumer, {EVENTS_STREAM: cursor}, count=200, block=block
        )
        entries = [entry for _, batch in resp or [] for entry in batch]
        events = []
        for _, fields in entries:
            if not fields:
                continue
            try:
                made = outcome_event(JobEvent.from_fields(fields))
            except ValueError:
                continue
            if made is not None:
                events.append(made)
        await emit_now(self.redis, events)
        if entries:
            await self.redis.xack(EVENTS_STREAM, GROUP, *[e[0] for e in entries])
        return len(entries)

    async def run_forever(self) -> None:
        await self.ensure_group()
        pending = True
        while True:
            try:
                if pending:
                    pending = await self.run_once("0") > 0
                else:
                    await self.run_once(">", self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job outcomes not notified yet (%s); again in 5 s", describe(exc))
                pending = True
                await asyncio.sleep(5)
