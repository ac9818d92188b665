"""A worker rides out a *hung* Redis (it accepts connections and answers nothing), not only a
stopped one: each Redis read has a deadline, so the worker notices within it, logs once,
records the end of a job that finished meanwhile when Redis answers again (once), and runs
the jobs queued after that. Blocking reads (XREADGROUP BLOCK) get their wait on top of the
deadline, and ``--check`` answers instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import func
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.queue import enqueue_now
from libs.settings import ServiceSettings
from libs.worker import Worker, WorkerRedisSettings, _check_health, open_pool, worker_settings
from tests.support.faults.redis import FaultyRedis, eventually, faulty_redis

SERVICE = "hungtest"
# the worker's deadline for a Redis answer in these tests (5 s in production)
DEADLINE_S = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultyRedis]:
    with faulty_redis(tmp_path / "redis") as redis:
        yield redis


@pytest.fixture
async def direct(server: FaultyRedis) -> AsyncIterator[Redis]:
    """The test's own client, straight to Redis (not through a black hole)."""
    client = Redis.from_url(server.url, socket_timeout=5)
    yield client
    await client.aclose()


class Jobs:
    """The job the worker runs: ``note(value)``; a ``gate`` job waits until released."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def note(self, ctx: dict[str, Any], value: str, **_meta: Any) -> str:
        self.values.append(value)
        if value == "gate":
            self.started.set()
            await self.gate.wait()
        return value

    async def ran(self, value: str, within: float) -> float:
        async def check() -> bool:
            return value in self.values

        return await eventually(check, within)


def worker_for(url: str, jobs: Jobs) -> Worker:
    return Worker(
        **worker_settings(
            SERVICE,
            [func(jobs.note, name="note")],
            redis_url=url,
            redis_timeout_s=DEADLINE_S,
            handle_signals=False,
            poll_delay=0.05,
        )
    )


async def submit(redis: Redis, value: str) -> str:
    job_id = await enqueue_now(redis, service=SERVICE, function="note", args=[value])
    assert job_id is not None
    return job_id


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))

    def redis(self) -> list[str]:
        return [line for _, line in self.lines if "Redis" in line]

    def when(self, text: str) -> float | None:
        return next((at for at, line in self.lines if text in line), None)


@pytest.fixture
def logged() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("aistack.worker")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.setLevel(old)
    logger.removeHandler(handler)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.async_run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.wait_for(worker.close(), 10)


async def ended_once(redis: Redis, job_id: str) -> None:
    """The job's end is recorded (result kept, claim released, off the queue)."""
    job = Job(job_id, redis, _queue_name=f"aistack:queue:{SERVICE}")
    assert await job.status() == JobStatus.complete
    info = await job.result_info()
    assert info is not None and info.success and info.job_try == 1
    assert not await redis.exists(in_progress_key_prefix + job_id)


async def test_worker_notices_a_hung_redis_within_its_deadline_and_resumes_after_it(
    server: FaultyRedis, direct: Redis, logged: Lines
) -> None:
    jobs = Jobs()
    worker = worker_for(server.url, jobs)
    async with running(worker) as task:
        gated = await submit(direct, "gate")
        await asyncio.wait_for(jobs.started.wait(), 10)

        server.hang()
        hung_at = time.monotonic()
        jobs.gate.set()  # the job ends while Redis hangs: its end cannot be written yet

        async def noticed() -> bool:
            return logged.when("Redis unreachable") is not None

        # arq alone waited forever on the poll's read (no socket timeout)
        await eventually(noticed, within=DEADLINE_S + 3)
        noticed_at = logged.when("Redis unreachable")
        assert noticed_at is not None and noticed_at - hung_at < DEADLINE_S + 1.5
        assert "TimeoutError" in logged.redis()[0]
        await asyncio.sleep(DEADLINE_S + 0.5)  # a retried write of the job's end times out too
        assert not task.done()

        server.resume()
        resumed_at = time.monotonic()

        async def back() -> bool:
            return logged.when("reachable again") is not None

        await eventually(back, within=8)
        back_at = logged.when("reachable again")
        assert back_at is not None and back_at - resumed_at < 6  # backoff is 5 s at most

        await submit(direct, "after")
        await jobs.ran("after", within=5)
        await ended_once(direct, gated)
        assert jobs.values == ["gate", "after"]
        # one line when it went, one when it came back
        assert len(logged.redis()) == 2, logged.redis()


class BlackHole:
    """A TCP proxy in front of Redis whose network can drop everything.

    While cut, nothing passes either way and connections stay open (no reset, no close). When
    healed, the connections from before stay dead (their state is gone, as after a NAT
    timeout or a failover behind the same address) and new ones pass: a client that waits on
    an old connection without a deadline waits forever.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.epoch = 0
        self.is_cut = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def cut(self) -> None:
        self.is_cut = True

    def heal(self) -> None:
        self.epoch += 1
        self.is_cut = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        epoch = self.epoch
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(src, dst, epoch))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, epoch: int) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if self.is_cut or epoch != self.epoch:
                    continue  # dropped on the floor
                dst.write(data)
                await dst.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()


async def test_worker_gets_past_a_network_that_drops_its_connections(
    server: FaultyRedis, direct: Redis, logged: Lines
) -> None:
    hole = BlackHole(server.server.port)
    url = await hole.start()
    jobs = Jobs()
    worker = worker_for(url, jobs)
    try:
        async with running(worker) as task:
            gated = await submit(direct, "gate")
            await asyncio.wait_for(jobs.started.wait(), 10)

            hole.cut()
            jobs.gate.set()  # its end is written into the hole, and lost
            await asyncio.sleep(DEADLINE_S + 1)
            hole.heal()  # the worker's connections stay dead: only new ones work
            assert not task.done()

            await submit(direct, "after")
            await jobs.ran("after", within=8)
            # the lost write of the job's end was made again on a new connection: the job is
            # not run a second time when its claim expires
            await ended_once(direct, gated)
            assert jobs.values == ["gate", "after"]
            lines = logged.redis()
            assert len(lines) == 2 and "reachable again" in lines[1], lines
    finally:
        await hole.close()


async def test_blocking_reads_get_their_wait_on_top_of_the_deadline(
    server: FaultyRedis,
) -> None:
    pool = open_pool(WorkerRedisSettings(port=server.server.port, read_timeout_s=0.3))
    try:
        await pool.xadd("stream", {"a": "1"})
        started = time.monotonic()
        # waits 0.8 s for an entry: longer than the deadline, and not an error
        assert await pool.xread({"stream": "$"}, block=800) == []
        assert 0.7 < time.monotonic() - started < 2
        await pool.xgroup_create("stream", "g", id="0")
        got = await pool.xreadgroup("g", "c", {"stream": ">"}, block=800)
        assert len(got) == 1  # answered at once when there is something
        assert await pool.xreadgroup("g", "c", {"stream": ">"}, block=800) == []

        server.hang()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(pool.xread({"stream": "$"}, block=500), 5)
        assert 0.7 < time.monotonic() - started < 2  # its wait, then the deadline
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            # on a new connection: its handshake has the deadline too
            await asyncio.wait_for(pool.get("k"), 5)
        assert time.monotonic() - started < 1
        server.resume()
        assert await pool.get("k") is None  # a new connection: the timed-out ones are closed
    finally:
        server.resume()
        await pool.aclose()


async def test_health_check_answers_while_redis_hangs(server: FaultyRedis) -> None:
    settings = ServiceSettings(redis_url=server.url, worker_redis_timeout_s=0.3)
    assert await asyncio.wait_for(_check_health(SERVICE, settings), 5) == 1  # no health key
    server.hang()
    started = time.monotonic()
    assert await asyncio.wait_for(_check_health(SERVICE, settings), 5) == 1
    assert time.monotonic() - started < 2
