"""Cancel: cooperative, through a flag in Redis and arq's abort."""

from __future__ import annotations

import time
from typing import Literal

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import WatchError

from libs.queue.fair import dequeue_waiting
from libs.queue.names import CANCEL_KEY_PREFIX, CANCEL_TTL_S, queue_name


class JobCancelled(Exception):
    """Raised inside a job when cancellation was requested (before start or at a progress call)."""


def cancel_key(job_id: str) -> str:
    return f"{CANCEL_KEY_PREFIX}{job_id}"


async def is_cancel_requested(redis: Redis, job_id: str) -> bool:
    """Whether someone asked to cancel this job."""
    return bool(await redis.exists(cancel_key(job_id)))


async def cancel_job(
    redis: Redis, *, job_id: str, service: str
) -> Literal["dequeued", "signalled"]:
    """Request cancellation of a job.

    A job no worker has picked up yet is removed from its queue atomically (it will never run;
    returns ``"dequeued"``; the caller records the cancellation). Otherwise the cancel flag is set
    and arq's abort requested (``"signalled"``): the running job stops at its next
    ``progress()`` call, or where it awaits, and emits its own ``cancelled`` event.
    """
    queue = queue_name(service)
    await redis.set(cancel_key(job_id), b"1", ex=CANCEL_TTL_S)
    if await dequeue_waiting(redis, queue, job_id):
        return "dequeued"  # still waiting for its turn in its organization's fair queue
    in_progress = in_progress_key_prefix + job_id
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(in_progress)
            running = await pipe.exists(in_progress)
            queued = await pipe.zscore(queue, job_id)
            if not running and queued is not None:
                pipe.multi()
                pipe.zrem(queue, job_id)
                pipe.delete(job_key_prefix + job_id)
                removed, _ = await pipe.execute()
                if removed:
                    return "dequeued"
            else:
                await pipe.reset()
        except WatchError:
            pass  # a worker picked it up meanwhile: signal it instead
    await redis.zadd(abort_jobs_ss, {job_id: int(time.time() * 1000)})
    return "signalled"
