"""The scheduler: fires each due tick of every schedule exactly once.

Every ``tick_s`` (the jobs worker runs it; any number of them may) it takes the schedules
whose next tick has come, locked with ``FOR UPDATE SKIP LOCKED``, and in that one transaction
records the tick's job (id ``sched-<schedule>-<tick>``, so the same tick can never make two
jobs) and moves the schedule on to its next tick. Another scheduler passes over a locked
schedule, and once the transaction commits the schedule is no longer due: each tick fires
once however many schedulers run. The job is enqueued after the commit, or by the reconciler
if that enqueue does not happen (a crash, Redis away): the record comes first.

A tick is on time when it is at most ``grace_s`` old. Ticks older than that were missed
(nothing ran then): a schedule that ``skip``s them goes on to its next tick; one that runs them
``run_once`` fires one job for all of them, for the latest.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from libs.db import SessionFactory, session_scope
from libs.storage_errors import describe, outage_of
from services.jobs.jobs.submit import submit
from services.jobs.schedules import cron
from services.jobs.schedules.repository import ScheduleRepository

log = logging.getLogger("aistack.jobs.scheduler")

BATCH = 100


def tick_job_id(schedule_id: object, tick: datetime) -> str:
    """The job of one tick of one schedule: the same tick, the same id."""
    return f"sched-{schedule_id}-{int(tick.timestamp())}"


class Scheduler:
    def __init__(
        self,
        redis: Redis,
        sessions: SessionFactory,
        *,
        grace_s: float = 60.0,
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.grace_s = grace_s

    async def run_once(self, now: datetime | None = None) -> int:
        """Fire what is due; the number of jobs started."""
        now = now or datetime.now(UTC)
        fired = 0
        async with session_scope(self.sessions) as session:
            for s in await ScheduleRepository(session).due(now, BATCH):
                latest = cron.last_at_or_before(s.cron, s.timezone, now) or s.next_run_at
                assert latest is not None
                on_time = now - latest <= timedelta(seconds=self.grace_s)
                if on_time or s.missed == "run_once":
                    job_id = await submit(
                        session,
                        self.redis,
                        service=s.service,
                        function=s.function,
                        kwargs=s.kwargs or {},
                        org_id=s.org_id,
                        user_id=s.created_by,
                        job_id=tick_job_id(s.id, latest),
                        priority=s.priority,  # type: ignore[arg-type]
                        schedule_id=s.id,
                        internal=s.org_id is None,
                    )
                    s.last_run_at, s.last_job_id, s.runs = latest, job_id, s.runs + 1
                    fired += 1
                else:
                    log.info(
                        "schedule %s (%s): ticks missed since %s skipped",
                        s.id,
                        s.name,
                        s.next_run_at,
                    )
                (s.next_run_at,) = cron.next_after(s.cron, s.timezone, now)
        return fired


async def schedule_forever(scheduler: Scheduler, tick_s: float = 1.0) -> None:
    """Run :meth:`Scheduler.run_once` every ``tick_s``; a failed round waits for the next."""
    while True:
        try:
            await scheduler.run_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if outage_of(exc) is not None:
                log.warning("scheduler: %s unavailable (%s)", outage_of(exc), describe(exc))
            else:
                log.exception("scheduler round failed")
        await asyncio.sleep(tick_s)
