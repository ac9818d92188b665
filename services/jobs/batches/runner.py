"""Running a batch (the ``run_batch`` job): validate its file, send its lines to the llm as
its owner with bounded concurrency, keep every line's result in PostgreSQL, write the output
and error files back to rag.

Never twice per ``custom_id``: lines are sent in file order and claimed in PostgreSQL a few
at a time (:data:`CLAIM_AHEAD` times ``JOBS_BATCH_CONCURRENCY``) just ahead of their requests,
as one number (``claimed_through``: every line up to it may have been sent); each line's
result is kept in ``jobs.batch_lines``. A run after a crash skips lines with a result and
reports claimed lines without one as interrupted (their request may have run) instead of
sending them again: at most the dead run's requests in flight and the few claimed next.

Cancel and expiry are seen within ``JOBS_BATCH_POLL_S``: requests in flight are
abandoned, and the files keep what completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import Database, session_scope
from libs.identity import INTERNAL_HEADER, Principal
from libs.notify import BatchOutcome, emit
from libs.queue import JobCancelled, JobContext
from libs.transport import Answer, ConnectFailed, Origin, TransportError
from services.jobs.batches.files import FileNotFound, RagFiles, Tokens
from services.jobs.batches.lines import Plan, Request, error_line, parse, request_id, response_line
from services.jobs.batches.repository import ERROR, OK, BatchRepository
from services.jobs.batches.schemas import FINISHED
from services.jobs.models import Batch
from services.jobs.settings import JobsSettings

log = logging.getLogger("aistack.jobs.batches")

BATCH_HEADER = b"x-aistack-batch"
# a request the llm refused for the caller's rate limits did not run: sent again after this
RATE_LIMITED_WAIT_S = 1.0
CONNECT_TRIES = 5
# lines claimed at once, per request in flight: enough that the workers never wait for a claim
CLAIM_AHEAD = 4
# a run started before its create committed: it looks for the batch this many times, this far
# apart, and leaves it to a retry on its first tries
COMMIT_WAITS = 20
COMMIT_WAIT_S = 0.05
COMMIT_TRIES = 3


class BatchNotVisible(Exception):
    """The batch is not there (yet): its create has not committed."""


Result = tuple[int, str | None, str, str]


def _now() -> datetime:
    return datetime.now(UTC)


class BatchRun:
    def __init__(
        self,
        ctx: JobContext,
        db: Database,
        http: httpx.AsyncClient,
        llm: Origin,
        settings: JobsSettings,
    ) -> None:
        """``http``: rag's file routes; ``llm``: the lines' requests (keep-alive connections to
        the llm, the least client CPU per line)."""
        self.ctx, self.db, self.http, self.llm, self.settings = ctx, db, http, llm, settings

    async def _load(self, batch_id: str) -> Batch | None:
        """The batch; its job is queued inside the create's transaction, so a run may start
        before that commits: it waits for the batch a moment, then, on its first tries, leaves
        it to a retry (a create that rolled back never shows one)."""
        for _ in range(COMMIT_WAITS):
            async with session_scope(self.db) as s:
                batch = await BatchRepository(s).get(batch_id)
            if batch is not None:
                return batch
            await asyncio.sleep(COMMIT_WAIT_S)
        if self.ctx.attempt < COMMIT_TRIES:
            raise BatchNotVisible(f"batch {batch_id} is not committed yet")
        return None

    async def run(self, batch_id: str) -> dict[str, Any]:
        batch = await self._load(batch_id)
        if batch is None or batch.status in FINISHED:
            return {"status": batch.status if batch else "missing"}
        self.batch = batch
        self.total = batch.total  # 0 until validated; the plan's count once it runs
        self.tokens = Tokens(
            Principal.model_validate(batch.principal), self.settings.internal_token_secret
        )
        self.files = RagFiles(self.http, self.settings.rag_url, self.tokens)
        if batch.status == "cancelling" and batch.in_progress_at is None:
            return await self._finish("cancelled")
        try:
            data = await self.files.content(batch.input_file_id)
        except FileNotFound:
            err = {
                "code": "file_not_found",
                "message": "The input file no longer exists.",
                "line": None,
                "param": "input_file_id",
            }
            return await self._fail([err])
        plan = parse(data, batch.endpoint, self.settings.batch_max_lines)
        if batch.status == "validating":
            if plan.errors:
                return await self._fail(plan.errors)
            async with session_scope(self.db) as s:
                moved = await BatchRepository(s).move(
                    batch_id,
                    ["validating"],
                    "in_progress",
                    in_progress_at=_now(),
                    total=plan.total,
                    model=plan.model,
                )
            if not moved:  # cancelled while validating
                return await self._finish("cancelled")
        elif batch.status == "finalizing":
            return await self._finish("completed")
        outcome = await self._execute(plan)
        return await self._finish(outcome)

    # --- the requests

    async def _execute(self, plan: Plan) -> str:
        """Run the lines without a result; "completed", "cancelled" or "expired"."""
        bid = self.batch.id
        async with session_scope(self.db) as s:
            repo = BatchRepository(s)
            states = await repo.line_states(bid)
            # claimed by a run that died, no result: it may have run, so it is never sent again
            claimed = self.batch.claimed_through
            lost: list[Result] = [
                (
                    r.line,
                    r.custom_id,
                    ERROR,
                    error_line(
                        r.custom_id,
                        "interrupted",
                        "The worker running this request stopped before its answer was recorded; "
                        "it is not sent again so that it never runs twice.",
                    ),
                )
                for r in plan.requests
                if r.line <= claimed and r.line not in states
            ]
            bad: list[Result] = [
                (n, c, ERROR, error_line(c, code, msg))
                for n, c, code, msg in plan.malformed
                if n not in states
            ]
            await repo.save(bid, lost + bad)
            counts = await repo.counts(bid)
        self.done_ok, self.done_err = counts.get(OK, 0), counts.get(ERROR, 0)
        self.total = plan.total
        pending = [r for r in plan.requests if r.line > claimed]
        self.finished: set[int] = set()
        self.buffer: list[Result] = []
        self.flush_lock = asyncio.Lock()
        self.stop = asyncio.Event()
        self.reason = "completed"
        await self._report()
        if not pending:
            return "completed"

        n = max(1, self.settings.batch_concurrency)
        queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=CLAIM_AHEAD * n)
        work: asyncio.Future[list[None]] = asyncio.gather(
            self._produce(queue, pending, n), *(self._work(queue) for _ in range(n))
        )
        watch = asyncio.create_task(self._watch())
        flush = asyncio.create_task(self._flush_every())
        stopped = asyncio.create_task(self.stop.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [work, stopped]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        finally:
            for t in (watch, flush, stopped):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(watch, flush, stopped, return_exceptions=True)
        await self._flush()
        if self.reason == "completed":
            return self.reason
        async with session_scope(self.db) as s:
            repo = BatchRepository(s)
            if self.reason == "expired":
                unrun = [r for r in pending if r.line not in self.finished]
                await repo.save(
                    bid,
                    [
                        (
                            r.line,
                            r.custom_id,
                            ERROR,
                            error_line(
                                r.custom_id,
                                "batch_expired",
                                "This request could not be executed before the completion window "
                                "expired.",
                            ),
                        )
                        for r in unrun
                    ],
                )
        return self.reason

    async def _produce(
        self, queue: asyncio.Queue[Request | None], pending: list[Request], workers: int
    ) -> None:
        """Claim lines a few at a time, just ahead of the workers taking them (one write per
        ``CLAIM_AHEAD * workers`` lines; at most about twice that many claimed, not sent)."""
        step = CLAIM_AHEAD * workers
        for i in range(0, len(pending), step):
            chunk = pending[i : i + step]
            async with session_scope(self.db) as s:
                await BatchRepository(s).claim_through(self.batch.id, chunk[-1].line)
            for r in chunk:
                await queue.put(r)
        for _ in range(workers):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[Request | None]) -> None:
        while (req := await queue.get()) is not None:
            result = await self._send(req)
            self.buffer.append(result)
            self.finished.add(req.line)
            if result[2] == OK:
                self.done_ok += 1
            else:
                self.done_err += 1

    async def _send(self, req: Request) -> Result:
        rid = request_id()
        payload = orjson.dumps(req.body)
        connect_failures = 0
        while True:
            headers = [
                (INTERNAL_HEADER.encode(), self.tokens.token().encode()),
                (b"content-type", b"application/json"),
                (BATCH_HEADER, self.batch.id.encode()),
                (b"x-request-id", rid.encode()),
            ]
            try:
                resp = await self.llm.post(self.batch.endpoint, headers, payload)
            except ConnectFailed as exc:
                # nothing was sent: trying again cannot run it twice
                connect_failures += 1
                if connect_failures >= CONNECT_TRIES:
                    return self._failed(req, "llm_unavailable", f"The llm is unreachable ({exc}).")
                await asyncio.sleep(0.5 * 2**connect_failures)
                continue
            except TransportError as exc:
                return self._failed(req, "request_failed", f"{type(exc).__name__}: {exc}"[:500])
            if resp.status == 429:
                await asyncio.sleep(_retry_after(resp))
                continue
            body = resp.body
            if b"json" not in resp.header(b"content-type"):
                text = body.decode("utf-8", "replace")[:2000]
                body = orjson.dumps({"error": {"message": text}})
            state = OK if 200 <= resp.status < 300 else ERROR
            return (
                req.line,
                req.custom_id,
                state,
                response_line(req.custom_id, resp.status, rid, body),
            )

    @staticmethod
    def _failed(req: Request, code: str, message: str) -> Result:
        return (req.line, req.custom_id, ERROR, error_line(req.custom_id, code, message))

    # --- watching, recording, reporting

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.batch_poll_s)
            async with session_scope(self.db) as s:
                seen = await BatchRepository(s).watch(self.batch.id)
            if seen is None or seen[0] == "cancelling":
                self._halt("cancelled")
                return
            if _now() >= seen[1]:
                self._halt("expired")
                return

    def _halt(self, reason: str) -> None:
        self.reason = reason
        self.stop.set()

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.batch_flush_s)
            await self._flush()

    async def _flush(self) -> None:
        """Record the results so far. A result leaves the buffer only once written, so a
        flush cancelled midway (the run ending) loses none: the next writes it (again)."""
        async with self.flush_lock:
            results = self.buffer[:]
            if results:
                async with session_scope(self.db) as s:
                    repo = BatchRepository(s)
                    await repo.save(self.batch.id, results)
                    await repo.update(self.batch.id, completed=self.done_ok, failed=self.done_err)
                del self.buffer[: len(results)]
        await self._report()

    async def _report(self) -> None:
        done = self.done_ok + self.done_err
        pct = 100 * done / self.total if self.total else 100
        try:
            await self.ctx.progress(
                pct, f"{done} of {self.total} requests ({self.done_err} failed)"
            )
        except JobCancelled:
            # the job was cancelled through /v1/jobs: the batch is cancelled
            async with session_scope(self.db) as s:
                await BatchRepository(s).move(
                    self.batch.id, ["in_progress"], "cancelling", cancelling_at=_now()
                )
            self._halt("cancelled")

    # --- the end

    async def _fail(self, errors: list[dict[str, Any]]) -> dict[str, Any]:
        async with session_scope(self.db) as s:
            if await BatchRepository(s).move(
                self.batch.id,
                ["validating", "in_progress", "cancelling"],
                "failed",
                errors=errors,
                failed_at=_now(),
            ):
                await self._tell_owner(s, "failed", {})
        return {"status": "failed", "errors": len(errors)}

    async def _tell_owner(
        self, session: AsyncSession, outcome: str, counts: dict[str, int]
    ) -> None:
        """The batch's end, to whoever created it (sent once the move commits; once per end)."""
        batch = self.batch
        if batch.user_id is None:
            return
        await emit(
            session,
            self.ctx.redis,
            "batch.completed" if outcome == "completed" else "batch.failed",
            BatchOutcome(
                batch_id=batch.id,
                status=outcome,
                total=self.total,  # self.batch was read before validation set its total
                completed=counts.get(OK, 0),
                failed=counts.get(ERROR, 0),
            ),
            source="jobs",
            org_id=batch.org_id,
            user_id=batch.user_id,
            subject={"batch_id": batch.id},
            key=f"{batch.id}:{outcome}",
        )

    async def _finish(self, outcome: str) -> dict[str, Any]:
        """Write the files and set the batch's last status (``outcome``)."""
        bid = self.batch.id
        if outcome == "completed":
            async with session_scope(self.db) as s:
                moved = await BatchRepository(s).move(
                    bid, ["in_progress"], "finalizing", finalizing_at=_now()
                )
                if not moved and await BatchRepository(s).status(bid) == "cancelling":
                    outcome = "cancelled"
        async with session_scope(self.db) as s:
            repo = BatchRepository(s)
            batch = await repo.get(bid)
            ok, err = await repo.results(bid, OK), await repo.results(bid, ERROR)
            counts = await repo.counts(bid)
        assert batch is not None
        files: dict[str, Any] = {}
        expires = batch.output_expires_after
        if ok and batch.output_file_id is None:
            files["output_file_id"] = await self.files.upload(
                f"{bid}_output.jsonl", _jsonl(ok), expires
            )
        if err and batch.error_file_id is None:
            files["error_file_id"] = await self.files.upload(
                f"{bid}_error.jsonl", _jsonl(err), expires
            )
        frm = {
            "completed": ["finalizing"],
            "cancelled": ["cancelling"],
            "expired": ["in_progress", "cancelling"],
        }[outcome]
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[
            outcome
        ]
        async with session_scope(self.db) as s:
            if await BatchRepository(s).move(
                bid,
                frm,
                outcome,
                **files,
                **{stamp: _now()},
                completed=counts.get(OK, 0),
                failed=counts.get(ERROR, 0),
            ):
                await self._tell_owner(s, outcome, counts)
        log.info("batch %s %s: %d ok, %d failed", bid, outcome, len(ok), len(err))
        return {"status": outcome, "completed": len(ok), "failed": len(err)}


def _jsonl(rows: list[str]) -> bytes:
    return "".join(f"{r}\n" for r in rows).encode()


def _retry_after(answer: Answer) -> float:
    """How long a 429 asks to wait (bounded), else a second."""
    try:
        return min(60.0, max(0.05, float(answer.header(b"retry-after") or b"x")))
    except ValueError:
        return RATE_LIMITED_WAIT_S
