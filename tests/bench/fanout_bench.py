"""Notification fan-out figures (``make bench BENCH_ARGS=fanout``; docs/benchmarks.md,
"Notification fan-out").

Real processes on embedded PostgreSQL and Redis: auth (answers the fan-out's recipients call,
``/internal/orgs/{id}/recipients``), the jobs app (serves ``/v1/notifications/events``) and the
jobs worker (runs ``deliver_notification``). One organization of ``--members`` users (1 owner,
the rest admins: the roles ``billing.budget_threshold`` goes to) is written straight into auth's
tables, as auth's tests do; the users have no e-mail address, so the fan-out writes in-app
notifications only (no mails). ``--clients`` of them follow their inbox over SSE.

- **burst**: ``--events`` events emitted at once through :func:`libs.notify.emit_now` (batches
  of 500): seconds until every notification row is written (events x members), events/s and
  notifications/s, and each event's emit -> arrival lag on the SSE clients (p50 / p99; it
  includes the time the event waited in the queue behind the others);
- **paced**: ``--paced`` events at ``--rate`` per second on the idle stack: the emit -> SSE
  arrival lag of one event when the queue is not backed up.

    python -m tests.bench.fanout_bench [--events 10000] [--members 100] [--clients 10]
        [--slots 100]

``--slots``: the worker's job slots (``JOBS_WORKER_MAX_JOBS``; the default deployment has 10):
the fan-out delivers the events of the jobs it runs at once as one batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from typing import Any

import httpx
import orjson
import psutil
from redis.asyncio import Redis
from sqlalchemy import func, select

from libs.db import make_engine, make_session_factory, session_scope
from libs.identity import Principal
from libs.notify import BudgetThreshold, Event, emit_now, make_event
from libs.testing import auth_headers
from services.auth.models import Membership, Organization, User
from services.jobs.notifications.models import Notification
from tests.bench.stack import Stack, stack

BATCH = 500


def cpu_probe(s: Stack) -> Any:
    """CPU seconds used so far by the jobs worker, the jobs app, auth and PostgreSQL (its
    postmaster and backends)."""
    procs = {n: psutil.Process(s.procs[n].popen.pid) for n in ("jobs-worker", "jobs", "auth")}
    pg = s.infra.postgres
    pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0]) if pg else None

    def probe() -> dict[str, float]:
        out = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
        if pid is not None:
            postmaster = psutil.Process(pid)
            total = 0.0
            for p in [postmaster, *postmaster.children()]:
                with contextlib.suppress(psutil.Error):
                    total += sum(p.cpu_times()[:2])
            out["postgres"] = total
        return out

    return probe


def cpu_per_event(before: dict[str, float], after: dict[str, float], events: int) -> str:
    return ", ".join(
        f"{name} {(after[name] - before[name]) / events * 1000:.1f} ms" for name in after
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0


async def organization(sessions: Any, members: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    org = uuid.uuid4()
    users = [uuid.uuid4() for _ in range(members)]
    async with session_scope(sessions) as session:
        session.add(Organization(id=org, name="Fan-out bench", personal=False))
        await session.flush()
        for i, u in enumerate(users):
            session.add(User(id=u, email=None, display_name=f"member {i}"))
        await session.flush()
        for i, u in enumerate(users):
            session.add(Membership(org_id=org, user_id=u, role="owner" if i == 0 else "admin"))
    return org, users


class Client:
    """One user's SSE stream: when each event's notification arrived (wall clock)."""

    def __init__(self, base: str, user: uuid.UUID, org: uuid.UUID) -> None:
        self.base = base
        self.headers = auth_headers(
            Principal(user_id=user, org_id=org, roles=["admin"], scopes=["jobs:read"])
        )
        self.arrived: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        async with (
            httpx.AsyncClient(base_url=self.base, timeout=None) as http,
            http.stream("GET", "/v1/notifications/events", headers=self.headers) as resp,
        ):
            resp.raise_for_status()
            event = ""
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    if event == "count":
                        self.ready.set()
                    elif event == "notification":
                        self.arrived[orjson.loads(line[5:])["event_id"]] = time.time()

    def start(self) -> None:
        self.task = asyncio.create_task(self.follow())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def events_for(org: uuid.UUID, n: int) -> list[Event]:
    return [
        make_event(
            "billing.budget_threshold",
            BudgetThreshold(threshold_percent=80, spent_usd=f"{i}.00", limit_usd="100.00"),
            org_id=org,
            source="bench",
        )
        for i in range(n)
    ]


async def rows(sessions: Any, org: uuid.UUID) -> int:
    async with sessions() as session:
        stmt = select(func.count()).select_from(Notification).where(Notification.org_id == org)
        return int((await session.execute(stmt)).scalar_one())


def lags(clients: list[Client], emitted: dict[str, float]) -> tuple[list[float], int]:
    """Emit -> arrival lags of the events in ``emitted``, and how many arrivals are missing."""
    got = [c.arrived[e] - t for c in clients for e, t in emitted.items() if e in c.arrived]
    return got, len(clients) * len(emitted) - len(got)


async def wait_arrivals(clients: list[Client], emitted: dict[str, float], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not lags(clients, emitted)[1]:
            return
        await asyncio.sleep(0.2)


async def measure(
    s: Stack, events: int, members: int, clients: int, paced: int, rate: float, slots: int
) -> str:
    auth = s.start("auth", "services.auth.app:app")
    jobs = s.start("jobs", "services.jobs.app:app", env={"JOBS_NOTIFICATION_STREAM_MAX_S": "3600"})
    s.start_worker("jobs", env={"JOBS_AUTH_URL": auth.url, "JOBS_WORKER_MAX_JOBS": str(slots)})
    engine = make_engine(s.infra.database_url)
    sessions = make_session_factory(engine)
    redis = Redis.from_url(s.infra.redis_url)
    org, users = await organization(sessions, members)
    followers = [Client(jobs.url, u, org) for u in users[:clients]]
    for c in followers:
        c.start()
    out = ["| measurement | result |", "|---|---|"]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in followers)), 30)
        # burst
        batch = events_for(org, events)
        emitted: dict[str, float] = {}
        probe = cpu_probe(s)
        cpu_before = probe()
        load_before = os.getloadavg()[0]
        start = time.monotonic()
        for i in range(0, events, BATCH):
            chunk = batch[i : i + BATCH]
            now = time.time()
            emitted.update({str(ev.id): now for ev in chunk})
            await emit_now(redis, chunk)
        emit_s = time.monotonic() - start
        want = events * members
        while (written := await rows(sessions, org)) < want:
            # ~20 minutes at the ~9 events/s measured on the shared 2-core machine
            if time.monotonic() - start > 3600:
                raise TimeoutError(f"{written} of {want} notifications after an hour")
            await asyncio.sleep(0.25)
        took = time.monotonic() - start
        cpu_after = probe()
        load_after = os.getloadavg()[0]
        await wait_arrivals(followers, emitted, 60)
        lag, missing = lags(followers, emitted)
        out.append(
            f"| {events:,} events x {members} members (emitted in {emit_s:.1f} s; "
            f"JOBS_WORKER_MAX_JOBS={slots}) | "
            f"{want:,} notifications written in {took:.1f} s: {events / took:.0f} events/s, "
            f"{want / took:,.0f} notifications/s |"
        )
        out.append(
            f"| the same burst: CPU per event (load average {load_before:.1f} -> "
            f"{load_after:.1f}) | {cpu_per_event(cpu_before, cpu_after, events)} |"
        )
        out.append(
            f"| the same burst: emit -> SSE arrival on {clients} connected clients (queue wait "
            f"included) | p50 {pct(lag, 50):.2f} s, p99 {pct(lag, 99):.2f} s; "
            f"{missing} of {clients * events:,} not arrived |"
        )
        # paced, on the idle stack
        emitted = {}
        for ev in events_for(org, paced):
            emitted[str(ev.id)] = time.time()
            await emit_now(redis, [ev])
            await asyncio.sleep(1 / rate)
        await wait_arrivals(followers, emitted, 30)
        lag, missing = lags(followers, emitted)
        out.append(
            f"| {paced} events at {rate:g}/s (each to {members} members): emit -> SSE arrival "
            f"on {clients} clients | p50 {pct(lag, 50) * 1000:.0f} ms, p99 "
            f"{pct(lag, 99) * 1000:.0f} ms; {missing} not arrived |"
        )
    finally:
        for c in followers:
            await c.stop()
        await redis.aclose()
        await engine.dispose()
    return "\n".join(out)


def run_bench(
    duration: float,
    events: int = 10_000,
    members: int = 100,
    clients: int = 10,
    paced: int = 200,
    rate: float = 10,
    slots: int = 100,
) -> str:
    with stack() as s:
        return asyncio.run(measure(s, events, members, clients, paced, rate, slots))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fanout_bench")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument(
        "--slots",
        type=int,
        default=100,
        help="the jobs worker's JOBS_WORKER_MAX_JOBS (the fan-out batches what its jobs hold)",
    )
    args = parser.parse_args()
    print(run_bench(0, args.events, args.members, args.clients, args.paced, args.rate, args.slots))


if __name__ == "__main__":
    main()
