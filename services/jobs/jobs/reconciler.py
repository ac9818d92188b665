"""The reconciler: a job's record never stays queued or running for a job Redis no longer has.

Every ``interval_s`` (the jobs worker runs it) it reads the records of unfinished jobs (queued
or running, no event for ``grace_s``) and asks Redis about each, in pipelined batches:

- arq still has the job (its key): nothing to do. That covers a job waiting, deferred, or
  running; a running job whose worker died is claimed again by arq once the worker's lease
  lapses (``WORKER_JOB_LEASE_S``) and runs as its next attempt;
- arq has its result: it finished but its last event was lost (its worker died before
  sending it): the end is recorded from the result;
- neither (Redis lost its data: restarted without persistence, ``FLUSHALL``; or the enqueue
  after the record's commit failed): a queued job is enqueued again from its record (same id,
  arguments, organization, request id and trace). A running one is too, as its next attempt
  (or recorded a dead letter when out of tries), once its worker is seen gone twice, at least
  one heartbeat apart: a worker that still runs it after Redis lost its keys keeps its lease
  (it sets it again) and reports the end itself, so the job does not run twice.

Enqueueing is idempotent by job id (an arq job key that exists is left alone), so two jobs
workers reconciling at once enqueue a lost job once. Jobs are idempotent besides (at least
once: :mod:`libs.queue`).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from redis.asyncio import Redis
from sqlalchemy import select

from libs.db import SessionFactory
from libs.queue import JobEvent, emit_event, enqueue_prepared
from libs.queue.names import WORKER_KEY_PREFIX
from libs.storage_errors import describe, outage_of
from libs.worker.presence import HEARTBEAT_TTL_S
from services.jobs.jobs.submit import prepared_from_record
from services.jobs.models import Job

log = logging.getLogger("aistack.jobs.reconciler")

PAGE = 1000


@dataclass
class Reconciled:
    """What one pass did."""

    checked: int = 0
    requeued: int = 0
    closed: int = 0
    dead: int = 0


class Reconciler:
    def __init__(
        self,
        redis: Redis,
        sessions: SessionFactory,
        *,
        grace_s: float = 30.0,
        max_per_pass: int = 20_000,
        worker_gone_s: float = HEARTBEAT_TTL_S,
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.grace_s = grace_s
        self.max_per_pass = max_per_pass
        self.worker_gone_s = worker_gone_s
        # running jobs whose worker was gone when last looked at: id -> when first seen so
        self._suspects: dict[str, float] = {}
        # where the next pass goes on (a pass checks at most max_per_pass records)
        self._after: tuple[datetime, str] | None = None

    async def run_once(self) -> Reconciled:
        done = Reconciled()
        horizon = datetime.now(UTC) - timedelta(seconds=self.grace_s)
        seen_suspects: set[str] = set()
        while done.checked < self.max_per_pass:
            rows = await self._page(horizon)
            if not rows:
                self._after = None
                break
            self._after = (rows[-1].last_event_at, rows[-1].id)
            await self._check(rows, done, seen_suspects)
            done.checked += len(rows)
            if len(rows) < PAGE:
                self._after = None
                break
        # a suspect not seen again (it ended, or came back) is forgotten
        self._suspects = {k: v for k, v in self._suspects.items() if k in seen_suspects}
        if done.requeued or done.closed or done.dead:
            log.warning(
                "reconciled %d unfinished jobs: %d enqueued again, %d ended, %d dead",
                done.checked,
                done.requeued,
                done.closed,
                done.dead,
            )
        return done

    async def _page(self, horizon: datetime) -> list[Job]:
        stmt = (
            select(Job)
            .where(Job.status.in_(("queued", "running")), Job.last_event_at < horizon)
            .order_by(Job.last_event_at, Job.id)
            .limit(PAGE)
        )
        if self._after is not None:
            at, jid = self._after
            stmt = stmt.where(
                (Job.last_event_at > at) | ((Job.last_event_at == at) & (Job.id > jid))
            )
        async with self.sessions() as session:
            return list((await session.scalars(stmt)).all())

    async def _check(self, rows: list[Job], done: Reconciled, seen: set[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.exists(job_key_prefix + row.id)
                pipe.exists(result_key_prefix + row.id)
                pipe.exists(in_progress_key_prefix + row.id)
                pipe.exists(WORKER_KEY_PREFIX + (row.worker or "-"))
            flags = await pipe.execute()
        again = []
        now = time.monotonic()
        for i, row in enumerate(rows):
            has_job, has_result, in_progress, worker_alive = flags[4 * i : 4 * i + 4]
            if has_job:
                continue
            if has_result:
                if await self._close_from_result(row):
                    done.closed += 1
                continue
            if row.status == "running":
                if in_progress or worker_alive:
                    continue  # its worker still runs it (and holds its lease)
                seen.add(row.id)
                first = self._suspects.setdefault(row.id, now)
                if now - first < self.worker_gone_s:
                    continue  # gone once: look again after a heartbeat
                self._suspects.pop(row.id, None)
                if row.max_tries is not None and row.attempts >= row.max_tries:
                    await emit_event(self.redis, _dead(row))
                    done.dead += 1
                    continue
                again.append(prepared_from_record(row, attempt=row.attempts + 1))
            else:
                again.append(prepared_from_record(row, attempt=row.attempts))
        if again:
            queued = await enqueue_prepared(self.redis, again)
            done.requeued += sum(1 for q in queued if q)

    async def _close_from_result(self, row: Job) -> bool:
        raw = await self.redis.get(result_key_prefix + row.id)
        if not raw:
            return False
        try:
            info: dict[str, Any] = pickle.loads(raw)  # noqa: S301 - arq's own record, our Redis
        except Exception:
            return False
        result = info.get("r")
        if info.get("s"):
            status, error = "succeeded", None
        elif isinstance(result, BaseException) and type(result).__name__ == "CancelledError":
            status, error = "cancelled", None
        else:
            status = "failed"
            error = (
                f"{type(result).__name__}: {result}"
                if isinstance(result, BaseException)
                else str(result)
            )
        await emit_event(
            self.redis,
            JobEvent(
                job_id=row.id,
                service=row.service,
                function=row.function,
                status=status,
                attempt=int(info.get("t") or row.attempts),
                error=error[:2000] if error else None,
                message="end recorded from the job's result (its last event was lost)",
                org_id=str(row.org_id) if row.org_id else None,
                internal=row.internal,
                parent_id=row.parent_id,
            ),
        )
        return True


def _dead(row: Job) -> JobEvent:
    return JobEvent(
        job_id=row.id,
        service=row.service,
        function=row.function,
        status="dead",
        attempt=row.attempts,
        error=(
            f"the worker running try {row.attempts} of {row.max_tries} is gone and Redis "
            "lost the job: out of tries"
        ),
        org_id=str(row.org_id) if row.org_id else None,
        internal=row.internal,
        parent_id=row.parent_id,
    )


async def reconcile_forever(reconciler: Reconciler, interval_s: float) -> None:
    """Run :meth:`Reconciler.run_once` every ``interval_s``; a failed pass waits for the next."""
    while True:
        try:
            await reconciler.run_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if outage_of(exc) is not None:
                log.warning("reconciler: %s unavailable (%s)", outage_of(exc), describe(exc))
            else:
                log.exception("reconciler pass failed")
        await asyncio.sleep(interval_s)
