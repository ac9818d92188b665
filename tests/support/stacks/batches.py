"""A Batch API stack through the gateway: fake auth's keys, rag (files), the jobs service and
its worker running ``run_batch``, over a given llm; the official SDK as two organizations."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from redis.asyncio import Redis
from sqlalchemy import text

from gateway.app import build_app as build_gateway
from gateway.settings import GatewaySettings
from libs.db import make_engine
from libs.testing import Infra
from libs.worker import Worker
from services.jobs.app import build_app as build_jobs
from services.jobs.settings import JobsSettings
from services.jobs.tasks import on_shutdown, on_startup, run_batch
from services.rag.app import build_app as build_rag
from tests.support.servers import Running, serve
from tests.support.stacks.rag import rag_settings
from tests.support.stacks.stand_ins import FAKE_AUTH
from tests.support.workers import make_worker


@dataclass
class BatchStack:
    url: str
    jobs: JobsSettings
    infra: Infra
    org: uuid.UUID = field(default_factory=uuid.uuid4)
    other_org: uuid.UUID = field(default_factory=uuid.uuid4)
    worker: Worker | None = None
    task: asyncio.Task[Any] | None = None
    jobs_app: Any = None  # the jobs service's FastAPI app (faults are injected into it)

    def sdk(self, org: uuid.UUID | None = None) -> openai.AsyncOpenAI:
        token = FAKE_AUTH.token(org_id=org or self.org)
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=token, max_retries=0, timeout=60
        )

    def start_worker(self, *, loops: bool = False, **options: Any) -> None:
        """The jobs worker running batches; with ``loops``, its start-up too (the events
        recorder keeping job records, the reconciler, the scheduler)."""
        if loops:
            options = {"on_startup": on_startup, "on_shutdown": on_shutdown, **options}
        self.worker = make_worker(
            self.infra.redis_url,
            "jobs",
            [run_batch],
            burst=False,
            database_url=self.infra.database_url,
            settings=self.jobs,
            poll_delay=0.05,
            **options,
        )
        self.task = asyncio.create_task(self.worker.async_run())

    async def stop_worker(self) -> None:
        """Stop the worker once its jobs have ended and their end events are out (the
        recorders of later tests would find them running forever otherwise)."""
        worker = self.worker
        if worker is not None:
            for _ in range(600):  # 30 s at most
                if not (worker.tasks or worker._recording):
                    break
                await asyncio.sleep(0.05)
            await worker.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if worker is not None:
            await on_shutdown(worker.ctx)  # the batches' HTTP clients (and loops)
        self.task, self.worker = None, None


@contextlib.asynccontextmanager
async def batch_stack(
    infra: Infra,
    tmp_path: Path,
    llm_url: str,
    *,
    worker: bool = True,
    loops: bool = False,
    **jobs: Any,
) -> AsyncIterator[BatchStack]:
    running: list[Running] = []
    await flush(infra)
    try:
        rag = await serve(build_rag(rag_settings(tmp_path, llm_url=llm_url)))
        running.append(rag)
        settings = JobsSettings.model_validate(
            {
                "rag_url": rag.url,
                "llm_url": llm_url,
                "batch_poll_s": 0.1,
                "batch_flush_s": 0.1,
                **jobs,
            }
        )
        jobs_fastapi = build_jobs(settings)
        jobs_app = await serve(jobs_fastapi)
        running.append(jobs_app)
        keys = await serve(FAKE_AUTH.app())
        running.append(keys)
        gw = await serve(
            build_gateway(
                GatewaySettings.model_validate(
                    {
                        "use_redis": True,
                        "jwks_url": f"{keys.url}/.well-known/jwks.json",
                        "rag_url": rag.url,
                        "llm_url": llm_url,
                        "jobs_url": jobs_app.url,
                        # tests poll batches.retrieve as fast as a client may
                        "rate_limit_enabled": False,
                    }
                )
            )
        )
        running.append(gw)
        stack = BatchStack(gw.url, settings, infra, jobs_app=jobs_fastapi)
        if worker:
            stack.start_worker(loops=loops)
        try:
            yield stack
        finally:
            await stack.stop_worker()
            await forget_jobs(infra, stack.org, stack.other_org)
            await flush(infra)
    finally:
        for r in reversed(running):
            await r.stop()


async def flush(infra: Infra) -> None:
    """Empty Redis, as the ``redis`` fixture does around a test: a batch's end queues
    notification deliveries (retried for minutes without auth here) that the next test's
    worker on the same queue would otherwise run."""
    client = Redis.from_url(infra.redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def forget_jobs(infra: Infra, *orgs: uuid.UUID) -> None:
    """Delete what the stack committed for ``orgs``: the job records (the batches' own, and
    the usage jobs their lines queued for billing, recorded but never run here), which other
    tests' reconcilers and counts must not see, and the batches (their lines with them) and
    their files."""
    engine = make_engine(infra.database_url)
    try:
        async with engine.begin() as conn:
            for table in ("jobs.jobs", "jobs.batches", "rag.files"):
                await conn.execute(
                    text(f"DELETE FROM {table} WHERE org_id = ANY(:orgs)"),
                    {"orgs": list(orgs)},
                )
    finally:
        await engine.dispose()


def jsonl(*rows: Any) -> bytes:
    """Rows as JSONL (a str row is written as it is: a malformed line)."""
    import orjson

    return b"".join((r.encode() if isinstance(r, str) else orjson.dumps(r)) + b"\n" for r in rows)


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "default",
            "messages": [{"role": "user", "content": content}],
            **body,
        },
    }


async def wait_status(
    client: openai.AsyncOpenAI, batch_id: str, statuses: set[str], within: float = 120
) -> Any:
    """Poll ``batches.retrieve`` (as a client does) until the batch is in ``statuses``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert loop.time() < deadline, f"batch still {batch.status}: {batch}"
        await asyncio.sleep(0.1)
