"""A jobs worker running batches, to kill mid-batch:
``python -m tests.support.batch_worker <redis url> <database url> <rag url> <llm url> <lease s>``
"""

from __future__ import annotations

import sys

from libs.worker import Worker, worker_settings
from services.jobs.settings import JobsSettings
from services.jobs.tasks import run_batch


def main() -> None:
    redis_url, database_url, rag_url, llm_url, lease = sys.argv[1:6]
    settings = JobsSettings(
        rag_url=rag_url,
        llm_url=llm_url,
        batch_poll_s=0.1,
        batch_flush_s=0.1,
        batch_concurrency=2,
    )
    worker = Worker(
        **worker_settings(
            "jobs",
            [run_batch],
            redis_url=redis_url,
            database_url=database_url,
            settings=settings,
            lease_s=float(lease),
            poll_delay=0.05,
        )
    )
    worker.run()


if __name__ == "__main__":
    main()
