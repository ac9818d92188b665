"""How a worker runs one job: arq's ``run_job``, in one round trip to Redis (and its share
of the poll that claimed it).

arq (0.28) spends five or six round trips on a job besides the job's own: the claim (our poll
script does it), reading the job with its try count, the cancel check and the ``running``
event, the ``succeeded`` event, and the end (result, off the queue). Here:

- **start**: the poll that claimed the job read it too, with its try, an abort or a
  cancellation asked for (:mod:`libs.queue.fair`; :data:`_START` when it did not);
- **end**: the end (arq's own writes), the job's fair slot given back, and its lifecycle
  events go in one script (:data:`_END`):
  the ``running`` event (unless the job ran long enough to send it on its own, after
  :data:`RUNNING_AFTER_S`, or reported progress, which sends it first) and its ``succeeded``,
  ``failed``, ``dead``, ``cancelled`` or next-attempt ``queued`` event. A job's end and what
  it reports are then recorded together or not at all, and a worker that loses Redis before
  it can write them writes both once Redis answers (:class:`libs.worker.runner.Worker`).

Everything else is arq's: hooks, timeouts, ``Retry``, aborts, results, max tries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    keep_cronjob_progress,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import ms_to_datetime, timestamp_ms, to_ms
from arq.worker import JobExecutionFailed, Retry, RetryJob, no_result
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from libs.queue import context as job_context
from libs.queue.cancel import cancel_key
from libs.queue.events import (
    JOB_LOG_MAXLEN,
    JOB_LOG_TTL_S,
    JobEvent,
    emit_event,
    event_fields_json,
)
from libs.queue.names import EVENTS_MAXLEN, EVENTS_STREAM, JOB_LOG_PREFIX, WATCH_KEY_PREFIX

if TYPE_CHECKING:
    from libs.worker.runner import Worker

log = logging.getLogger("aistack.worker")

# a job still running this long sends its running event on its own (shorter ones send it
# with their end)
RUNNING_AFTER_S = 0.05
RETRY_KEY_TTL_S = 88400

# KEYS: job key, retry key, abort set, cancel key. ARGV: job id.
# Returns the job's data ("" when it expired), its try, whether an abort was asked, whether a
# cancellation was.
_START = """
local data = redis.call('GET', KEYS[1]) or ''
local try = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 88400)
local aborted = redis.call('ZREM', KEYS[3], ARGV[1])
local cancelled = redis.call('EXISTS', KEYS[4])
return {data, try, aborted, cancelled}
"""
_START_SHA = hashlib.sha1(_START.encode(), usedforsecurity=False).hexdigest()


async def _start(redis: Redis, job_id: str) -> list[Any]:
    args: list[Any] = [
        4,
        job_key_prefix + job_id,
        retry_key_prefix + job_id,
        abort_jobs_ss,
        cancel_key(job_id),
        job_id,
    ]
    try:
        return await redis.evalsha(_START_SHA, *args)  # type: ignore[misc]
    except NoScriptError:
        return await redis.eval(_START, *args)  # type: ignore[misc]


class JobReports(job_context.EventSink):
    """A running job's lifecycle events, held for its end's transaction (see the module
    docstring); progress goes out at once, its ``running`` event first."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.running: JobEvent | None = None
        self.ended: list[JobEvent] = []
        # the fair slot the job holds, given back with its end
        self.slot: str | None = None
        self._sending: asyncio.Task[None] | None = None

    async def started(self, event: JobEvent) -> None:
        self.running = event

    async def before_progress(self) -> None:
        await self.send_running()

    async def send_running(self) -> None:
        if self._sending is None and self.running is not None:
            event, self.running = self.running, None
            self._sending = asyncio.ensure_future(emit_event(self.redis, event))
        if self._sending is not None:
            await asyncio.shield(self._sending)

    async def end(self, event: JobEvent) -> None:
        self.ended.append(event)

    async def release(self, slot: str) -> None:
        self.slot = slot

    def pending(self) -> list[JobEvent]:
        """What the end's transaction sends: the running event if still held, the end."""
        held = [self.running] if self.running is not None else []
        self.running = None
        return [*held, *self.ended]


async def run_job(w: Worker, job_id: str, score: int) -> None:
    """Run one claimed job (arq's ``Worker.run_job``; see the module docstring)."""
    start_ms = timestamp_ms()
    claimed = w.claimed.pop(job_id, None)
    if claimed is not None:  # read by the poll that claimed it
        data, job_try, abort_job, cancelled = (
            claimed.data,
            claimed.job_try,
            claimed.aborted,
            claimed.cancelled,
        )
    else:
        data, job_try, abort_job, cancelled = await _start(w.pool, job_id)
    job_try = int(job_try)
    function_name, enqueue_time_ms = "<unknown>", 0
    args: tuple[Any, ...] = ()
    kwargs: dict[Any, Any] = {}

    async def job_failed(exc: BaseException) -> None:
        w.jobs_failed += 1
        result_data_ = serialize_result(
            function=function_name,
            args=args,
            kwargs=kwargs,
            job_try=job_try,
            enqueue_time_ms=enqueue_time_ms,
            success=False,
            result=exc,
            start_ms=start_ms,
            finished_ms=timestamp_ms(),
            ref=f"{job_id}:{function_name}",
            serializer=w.job_serializer,
            queue_name=w.queue_name,
            job_id=job_id,
        )
        await asyncio.shield(w.finish_failed_job(job_id, result_data_))

    if not data:
        log.warning("job %s expired", job_id)
        return await job_failed(JobExecutionFailed("job expired"))
    try:
        function_name, args, kwargs, enqueue_job_try, enqueue_time_ms = deserialize_job_raw(
            data if isinstance(data, bytes) else data.encode("latin-1"),
            deserializer=w.job_deserializer,
        )
    except SerializationError as e:
        log.exception("deserializing job %s failed", job_id)
        return await job_failed(e)
    if abort_job:
        log.info("job %s (%s) aborted before it started", job_id, function_name)
        return await job_failed(asyncio.CancelledError())
    function = w.functions.get(function_name)
    if function is None:
        log.warning("job %s, function %r not found", job_id, function_name)
        return await job_failed(JobExecutionFailed(f"function {function_name!r} not found"))
    keep_in_progress = keep_cronjob_progress if hasattr(function, "next_run") else None
    if enqueue_job_try and enqueue_job_try > job_try:
        job_try = enqueue_job_try
        await w.pool.setex(retry_key_prefix + job_id, RETRY_KEY_TTL_S, str(job_try))
    max_tries = w.max_tries if function.max_tries is None else function.max_tries
    if job_try > max_tries:
        log.warning("job %s (%s): max %d tries exceeded", job_id, function_name, max_tries)
        return await job_failed(JobExecutionFailed(f"max {max_tries} retries exceeded"))

    result: Any = no_result
    finish = False
    timeout_s = w.job_timeout_s if function.timeout_s is None else function.timeout_s
    incr_score: int | None = None
    reports = JobReports(w.pool)
    ctx = {
        **w.ctx,
        "job_id": job_id,
        "job_try": job_try,
        "enqueue_time": ms_to_datetime(enqueue_time_ms),
        "score": score,
        job_context.SINK_CTX: reports,
        job_context.CANCELLED_CTX: bool(cancelled),
    }
    if w.on_job_start:
        await w.on_job_start(ctx)
    start_ms = timestamp_ms()
    success = False
    late = asyncio.get_running_loop().call_later(
        RUNNING_AFTER_S, lambda: asyncio.ensure_future(reports.send_running())
    )
    try:
        w.job_tasks[job_id] = task = w.loop.create_task(function.coroutine(ctx, *args, **kwargs))
        try:
            result = await asyncio.wait_for(task, timeout_s)
        finally:
            del w.job_tasks[job_id]
            late.cancel()
    except (Exception, asyncio.CancelledError) as e:
        finished_ms = timestamp_ms()
        if w.retry_jobs and isinstance(e, Retry):
            incr_score = e.defer_score
            if e.defer_score:
                incr_score = e.defer_score + (timestamp_ms() - score)
            w.jobs_retried += 1
        elif job_id in w.aborting_tasks and isinstance(e, asyncio.CancelledError):
            result = e
            finish = True
            w.aborting_tasks.remove(job_id)
            w.jobs_failed += 1
        elif w.retry_jobs and isinstance(e, asyncio.CancelledError | RetryJob):
            log.info("job %s (%s) cancelled, will be run again", job_id, function_name)
            w.jobs_retried += 1
        else:
            if not isinstance(e, Exception) or not getattr(function, "spec", None):
                # a declared job has logged it (libs.queue.wrapper), with its trace
                log.exception("job %s (%s) failed: %s", job_id, function_name, e)
            result = e
            finish = True
            w.jobs_failed += 1
    else:
        success = True
        finished_ms = timestamp_ms()
        finish = True
        w.jobs_complete += 1

    keep_result_forever = (
        w.keep_result_forever
        if function.keep_result_forever is None
        else function.keep_result_forever
    )
    result_timeout_s = w.keep_result_s if function.keep_result_s is None else function.keep_result_s
    result_data = None
    if result is not no_result and (keep_result_forever or result_timeout_s > 0):
        result_data = serialize_result(
            function_name,
            args,
            kwargs,
            job_try,
            enqueue_time_ms,
            success,
            result,
            start_ms,
            finished_ms,
            f"{job_id}:{function_name}",
            w.queue_name,
            job_id=job_id,
            serializer=w.job_serializer,
        )
    if w.on_job_end:
        await w.on_job_end(ctx)
    w.end_events[job_id] = (reports.pending(), reports.slot)
    await asyncio.shield(
        w.finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )
    )
    if w.after_job_end:
        await w.after_job_end(ctx)


# arq's finish_job writes and the job's held events, in one script.
# KEYS: in-progress, retry, job, result, abort set, queue, events stream, fair slot (or ""),
#       then per event: its job's watch key and log, its parent's (or "" twice)
# ARGV: job id, finish ("1"/"0"), result ("" none), result px ("" forever), incr score
#       ("" none), keep in progress ms ("" none), stream maxlen, log maxlen, log ttl,
#       event count, then per event its fields as a JSON array
_END = """
local jid = ARGV[1]
if ARGV[6] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
if ARGV[2] == '1' then
  if ARGV[3] ~= '' then
    if ARGV[4] == '' then
      redis.call('SET', KEYS[4], ARGV[3])
    else
      redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
    end
  end
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[5], jid)
  redis.call('ZREM', KEYS[6], jid)
elseif ARGV[5] ~= '' then
  redis.call('ZINCRBY', KEYS[6], ARGV[5], jid)
end
if KEYS[8] ~= '' then
  redis.call('ZREM', KEYS[8], jid)
end
local n = tonumber(ARGV[10])
for i = 1, n do
  local fields = cjson.decode(ARGV[10 + i])
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[7], '*', unpack(fields))
  local base = 8 + (i - 1) * 4
  for j = 1, 3, 2 do
    local watch, log = KEYS[base + j], KEYS[base + j + 1]
    if watch ~= '' and redis.call('EXISTS', watch) == 1 then
      redis.call('XADD', log, 'MAXLEN', '~', ARGV[8], '*', unpack(fields))
      redis.call('EXPIRE', log, ARGV[9])
    end
  end
end
return 1
"""
_END_SHA = hashlib.sha1(_END.encode(), usedforsecurity=False).hexdigest()


async def write_end(
    pool: Redis,
    queue: str,
    job_id: str,
    finish: bool,
    result_data: bytes | None,
    result_timeout_s: float | None,
    keep_result_forever: bool,
    incr_score: int | None,
    keep_in_progress: float | None,
    *,
    events: Sequence[JobEvent] = (),
    slot: str | None = None,
) -> None:
    """arq's ``finish_job`` writes, the job's held events and its fair slot's release, in one
    script (atomic, one round trip)."""
    expire = None if keep_result_forever else result_timeout_s
    keys: list[Any] = [
        in_progress_key_prefix + job_id,
        retry_key_prefix + job_id,
        job_key_prefix + job_id,
        result_key_prefix + job_id,
        abort_jobs_ss,
        queue,
        EVENTS_STREAM,
        slot or "",
    ]
    fields = []
    for event in events:
        keys += [WATCH_KEY_PREFIX + event.job_id, JOB_LOG_PREFIX + event.job_id]
        if event.parent_id:
            keys += [WATCH_KEY_PREFIX + event.parent_id, JOB_LOG_PREFIX + event.parent_id]
        else:
            keys += ["", ""]
        fields.append(event_fields_json(event))
    px = to_ms(expire)
    args: list[Any] = [
        job_id,
        "1" if finish else "0",
        (result_data or b"") if finish else b"",
        "" if px is None else px,
        incr_score or "",
        "" if keep_in_progress is None else to_ms(keep_in_progress),
        EVENTS_MAXLEN,
        JOB_LOG_MAXLEN,
        JOB_LOG_TTL_S,
        len(fields),
        *fields,
    ]
    try:
        await pool.evalsha(_END_SHA, len(keys), *keys, *args)  # type: ignore[misc]
    except NoScriptError:
        await pool.eval(_END, len(keys), *keys, *args)  # type: ignore[misc]
