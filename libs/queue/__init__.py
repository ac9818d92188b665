"""Queue runtime on arq: enqueue after commit, job wrapper, lifecycle events, cancel.

Contracts every service relies on:

- **Queues**: one per service, ``aistack:queue:<service>``; the service's worker
  (``python -m libs.worker <service>``) consumes only its own queue.
- **Enqueue after commit**: :func:`enqueue` registers an after-commit hook on the session, so a
  job never runs for data that was rolled back. :func:`enqueue_now` is for callers without a
  transaction.
- **At least once, so idempotent**: arq may run a job more than once (a worker dies mid-job, a
  shutdown interrupts it). Every job function must be safe to run again with the same
  arguments (upserts, ``ON CONFLICT DO NOTHING``, "already done" checks).
- **Idempotent job ids**: enqueueing a job id that is queued, running, or finished within the
  result retention window (:data:`RESULT_RETENTION_S`, 24 h after it finished) is a no-op; after
  that window the same id would run again.
- **Arguments are JSON**: args/kwargs must be JSON-serialisable (dicts, lists, str, numbers).
  They travel in the ``queued`` event so the jobs service can retry a job.
- **Metadata**: each job carries its request id, W3C trace context, org, user and service in a
  reserved ``_meta`` keyword; the worker-side wrapper (:func:`job`) restores them so the job's
  log lines carry the enqueuing request's request id and trace id.
- **Worker functions** must be wrapped with :func:`job` (it strips ``_meta``); a job receives a
  :class:`JobContext` (``progress()``, ``job_id``, ``attempt``, ``org_id``, ``state`` = the
  worker's resources such as ``db``), then its own args.
- **Lifecycle events** go to the Redis stream :data:`EVENTS_STREAM` (fields: see
  :class:`JobEvent`); the jobs service turns them into ``jobs.jobs`` rows.
- **Internal jobs** (``internal=True`` at enqueue, e.g. usage bookkeeping) carry the flag in
  their metadata and every event; the jobs service keeps them out of users' job lists.
- **Cancel** is cooperative: a flag in Redis checked before the job starts and at every
  ``progress()`` call (raising :class:`JobCancelled`), plus arq's abort for jobs blocked
  elsewhere. A job not yet picked up is removed from the queue outright.
"""

from __future__ import annotations

from libs.queue import fair
from libs.queue.cancel import JobCancelled, cancel_job, cancel_key, is_cancel_requested
from libs.queue.context import JobContext
from libs.queue.enqueue import (
    PreparedJob,
    _trace_id_from_carrier,
    enqueue,
    enqueue_now,
    enqueue_prepared,
    prepare_job,
)
from libs.queue.events import UNSENT_EVENTS_MAX, JobEvent, _unsent, emit_event, resend_unsent_events
from libs.queue.names import (
    CANCEL_KEY_PREFIX,
    CANCEL_TTL_S,
    EVENTS_MAXLEN,
    EVENTS_STREAM,
    META_KWARG,
    QUEUE_PREFIX,
    RESULT_RETENTION_S,
    TERMINAL_STATUSES,
    JobStatus,
    Priority,
    as_arq,
    new_job_id,
    queue_name,
)
from libs.queue.types import JobSpec, Periodic, Permanent, RetryPolicy
from libs.queue.wrapper import (
    DEFAULT_MAX_TRIES,
    DeclaredJob,
    JobFunction,
    after_job_end,
    job,
    outage_retry_delay_s,
)

__all__ = [
    "CANCEL_KEY_PREFIX",
    "CANCEL_TTL_S",
    "DEFAULT_MAX_TRIES",
    "EVENTS_MAXLEN",
    "EVENTS_STREAM",
    "META_KWARG",
    "QUEUE_PREFIX",
    "RESULT_RETENTION_S",
    "TERMINAL_STATUSES",
    "UNSENT_EVENTS_MAX",
    "DeclaredJob",
    "JobCancelled",
    "JobContext",
    "JobEvent",
    "JobFunction",
    "JobSpec",
    "JobStatus",
    "Periodic",
    "Permanent",
    "PreparedJob",
    "Priority",
    "RetryPolicy",
    "_trace_id_from_carrier",
    "_unsent",
    "after_job_end",
    "as_arq",
    "cancel_job",
    "cancel_key",
    "emit_event",
    "enqueue",
    "enqueue_now",
    "enqueue_prepared",
    "fair",
    "is_cancel_requested",
    "job",
    "new_job_id",
    "outage_retry_delay_s",
    "prepare_job",
    "queue_name",
    "resend_unsent_events",
]
