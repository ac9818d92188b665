"""The fan-out: events become, once per event id, their recipients' in-app notifications,
the mails they chose (now or in their digest), and webhook messages to the organization's
endpoints.

Recipients are asked of auth (internal HTTP) for every batch of events: members of the event's
organization with the kind's roles, or the one user it names while they still belong to it (an
event about an organization someone left reaches nobody there), never the actor themselves.
Account notices (``security.*``) go to their user wherever they act.

Events are delivered in batches (:class:`FanoutBatcher`: the worker's concurrent
``deliver_notification`` jobs hand their events to one loop): one recipients call per distinct
question in the batch (up to ``ask_concurrency`` at once), one preferences query, one INSERT of
the events, one of all their notifications (copying each event's fields from its record in
PostgreSQL, so only ids travel), one webhook endpoints query, and one script call appending to
the users' live streams.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionFactory, session_scope
from libs.errors import ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.notify import KINDS, Event
from libs.queue import enqueue
from services.jobs.email.service import SEND_MAIL
from services.jobs.notifications import inbox
from services.jobs.notifications.models import NotificationMail
from services.jobs.notifications.repository import NotificationRepository
from services.jobs.notifications.schemas import NotificationOut
from services.jobs.preferences.repository import PreferenceRepository
from services.jobs.preferences.service import effective
from services.jobs.webhooks.service import messages_for_events

log = logging.getLogger("aistack.jobs.notifications")


@dataclass
class Person:
    user_id: uuid.UUID
    email: str | None
    name: str
    # the id as text, once (a batch's events often share their recipients)
    uid: str = field(init=False)

    def __post_init__(self) -> None:
        self.uid = str(self.user_id)


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_ids(n: int) -> list[str]:
    """``n`` new notification ids as text: UUIDs of version 7 (RFC 9562: the time in ms, then
    random bits), so the index on ``id`` grows at its end instead of at random pages; several
    times cheaper than ``str(uuid4())`` each."""
    ms = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{ms[:8]}-{ms[8:12]}-7"
    h = os.urandom(10 * n).hex()
    return [
        f"{head}{h[i : i + 3]}-{_VARIANT[h[i + 3]]}{h[i + 4 : i + 7]}-{h[i + 7 : i + 19]}"
        for i in range(0, 20 * n, 20)
    ]


class Recipients:
    """Members and contacts, asked of auth over internal HTTP (as a service)."""

    def __init__(self, http: httpx.AsyncClient, auth_url: str, secret: str) -> None:
        self.http = http
        self.auth_url = auth_url.rstrip("/")
        self.secret = secret

    async def _get(self, path: str, params: list[tuple[str, Any]] | None = None) -> Any:
        token = sign_internal_token(Principal(), self.secret)
        try:
            resp = await self.http.get(
                f"{self.auth_url}{path}",
                params=params,
                headers={INTERNAL_HEADER: token},
                timeout=10,
            )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable("auth unreachable", code="auth_unavailable") from exc
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ServiceUnavailable(
                f"auth answered {resp.status_code} for {path}", code="auth_unavailable"
            )
        return resp.json()

    async def members(
        self, org_id: uuid.UUID, roles: list[str], user_ids: list[uuid.UUID]
    ) -> tuple[list[Person], str]:
        """Members with one of ``roles`` or among ``user_ids``, and the organization's name."""
        params: list[tuple[str, Any]] = [("role", r) for r in roles]
        params += [("user_id", str(u)) for u in user_ids]
        body = await self._get(f"/internal/orgs/{org_id}/recipients", params) or {}
        people = [
            Person(uuid.UUID(m["user_id"]), m.get("email"), m.get("display_name") or "")
            for m in body.get("members", [])
        ]
        return people, (body.get("org") or {}).get("name", "")

    async def contact(self, user_id: uuid.UUID) -> Person | None:
        body = await self._get(f"/internal/users/{user_id}/contact")
        if body is None:
            return None
        return Person(user_id, body.get("email"), body.get("display_name") or "")


class _Asked:
    """Recipients answers within one batch: the same question is asked of auth once, different
    ones up to ``concurrency`` at a time (a batch may span many organizations)."""

    def __init__(self, recipients: Recipients, concurrency: int) -> None:
        self.recipients = recipients
        self.limit = asyncio.Semaphore(concurrency)
        self.seen: dict[tuple[Any, ...], asyncio.Future[Any]] = {}

    async def _ask(self, key: tuple[Any, ...], call: Callable[[], Awaitable[Any]]) -> Any:
        if key not in self.seen:

            async def limited() -> Any:
                async with self.limit:
                    return await call()

            self.seen[key] = asyncio.ensure_future(limited())
        return await self.seen[key]

    async def members(
        self, org_id: uuid.UUID, roles: list[str], user_ids: list[uuid.UUID]
    ) -> tuple[list[Person], str]:
        key = ("members", org_id, tuple(roles), tuple(user_ids))
        answer: tuple[list[Person], str] = await self._ask(
            key, lambda: self.recipients.members(org_id, roles, user_ids)
        )
        return answer

    async def contact(self, user_id: uuid.UUID) -> Person | None:
        answer: Person | None = await self._ask(
            ("contact", user_id), lambda: self.recipients.contact(user_id)
        )
        return answer


@dataclass
class _Plan:
    """What one event of a batch becomes."""

    ev: Event
    in_app: list[str] = field(default_factory=list)  # users' ids
    ids: list[str] = field(default_factory=list)  # their notifications' ids
    mails: list[dict[str, Any]] = field(default_factory=list)


class Fanout:
    """Turns events into notifications, mails and webhook messages, once per event id."""

    def __init__(
        self,
        sessions: SessionFactory,
        redis: Redis,
        recipients: Recipients,
        *,
        ask_concurrency: int = 16,
    ) -> None:
        self.sessions = sessions
        self.redis = redis
        self.recipients = recipients
        # recipients questions of one batch asked of auth at once
        self.ask_concurrency = ask_concurrency

    async def people_for(self, ev: Event, asked: _Asked | None = None) -> tuple[list[Person], str]:
        ask = asked or _Asked(self.recipients, self.ask_concurrency)
        spec = KINDS[ev.kind]
        if spec.account or ev.org_id is None:
            person = await ask.contact(ev.user_id) if ev.user_id else None
            return ([person] if person else []), ""
        people: list[Person] = []
        org_name = ""
        if ev.user_id is not None:
            people, org_name = await ask.members(ev.org_id, [], [ev.user_id])
        if not people and spec.roles:
            # no user named, or they are gone: the kind's roles
            people, org_name = await ask.members(ev.org_id, list(spec.roles), [])
        return [p for p in people if p.user_id != ev.actor_id], org_name

    async def _people(self, ev: Event, asked: _Asked) -> tuple[list[Person], str]:
        return await self.people_for(ev, asked) if KINDS[ev.kind].inbox else ([], "")

    async def deliver(self, ev: Event) -> int:
        """Record the event and notify its recipients; how many got it in-app (0 for a
        duplicate). Raises when auth or the database fails (the job retries)."""
        (result,) = await self.deliver_many([ev])
        if isinstance(result, BaseException):
            raise result
        return result

    async def deliver_many(self, events: Sequence[Event]) -> list[int | Exception]:
        """:meth:`deliver` for a batch, in one transaction: per event, how many got it in-app,
        or the exception its recipients lookup raised (that event only is left undelivered).
        Raises when the database fails (nothing of the batch is kept)."""
        results: list[int | Exception] = [0] * len(events)
        asked = _Asked(self.recipients, self.ask_concurrency)
        people: dict[int, tuple[list[Person], str]] = {}
        first: dict[uuid.UUID, int] = {}
        for i, ev in enumerate(events):
            if ev.kind not in KINDS:
                log.warning("event %s of unknown kind %r dropped", ev.id, ev.kind)
            elif ev.id not in first:  # the same event twice in a batch: once
                first[ev.id] = i
        answers = await asyncio.gather(
            *(self._people(events[i], asked) for i in first.values()), return_exceptions=True
        )
        for i, answer in zip(first.values(), answers, strict=True):
            if isinstance(answer, Exception):
                results[i] = answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                people[i] = answer
        if not people:
            return results
        live: list[inbox.LiveGroup] = []
        async with session_scope(self.sessions) as session:
            prefs = PreferenceRepository(session)
            chosen, defaults = await prefs.for_kinds(
                list({p.user_id for ps, _ in people.values() for p in ps}),
                list({o for i in people if (o := events[i].org_id) is not None}),
                list({events[i].kind for i in people}),
            )
            plans = {
                i: self._plan(events[i], ps, org, chosen, defaults)
                for i, (ps, org) in people.items()
            }
            repo = NotificationRepository(session)
            new = await repo.record_events([(p.ev, len(p.in_app)) for p in plans.values()])
            plans = {i: p for i, p in plans.items() if p.ev.id in new}
            for p in plans.values():
                p.ids = new_ids(len(p.in_app))
            counts, created_at = await repo.add_many(
                [(p.ids, p.in_app, p.ev.id) for p in plans.values()]
            )
            for i, p in plans.items():
                results[i] = counts.get(p.ev.id, 0)
            await self._mails(session, [m for p in plans.values() for m in p.mails])
            await messages_for_events(session, self.redis, [p.ev for p in plans.values()])
            live = self._live(plans.values(), created_at)
        try:
            await inbox.publish_notifications(self.redis, live)
        except Exception as exc:  # stored; live clients see them in the list
            log.warning("%d notifications not pushed live: %s", sum(len(g.ids) for g in live), exc)
        return results

    @staticmethod
    def _plan(
        ev: Event,
        people: list[Person],
        org_name: str,
        chosen: dict[tuple[uuid.UUID, str], list[str]],
        defaults: dict[tuple[uuid.UUID, str], list[str]],
    ) -> _Plan:
        plan = _Plan(ev)
        org_default = defaults.get((ev.org_id, ev.kind)) if ev.org_id else None
        seen: set[uuid.UUID] = set()
        for p in people:
            if p.user_id in seen:
                continue
            seen.add(p.user_id)
            channels = effective(ev.kind, chosen.get((p.user_id, ev.kind)), org_default)
            if "in_app" in channels:
                plan.in_app.append(p.uid)
            mode = "now" if "email" in channels else "digest" if "digest" in channels else None
            if mode and p.email:
                plan.mails.append(
                    {
                        "id": uuid.uuid4(),
                        "user_id": p.user_id,
                        "org_id": ev.org_id,
                        "org_name": org_name[:200],
                        "event_id": ev.id,
                        "kind": ev.kind,
                        "email": p.email,
                        "name": p.name[:200],
                        "mode": mode,
                        "status": "pending",
                    }
                )
        return plan

    async def _mails(self, session: AsyncSession, mails: list[dict[str, Any]]) -> None:
        if not mails:
            return
        stmt = (
            insert(NotificationMail)
            .values(mails)
            .on_conflict_do_nothing(constraint="uq_notification_mails_event_id_user_id")
        )
        await session.execute(stmt)
        for m in mails:
            if m["mode"] == "now":
                await enqueue(
                    session,
                    self.redis,
                    service="jobs",
                    function=SEND_MAIL,
                    kwargs={"mail_id": str(m["id"])},
                    job_id=f"mail-{m['id']}",
                    internal=True,
                )

    @staticmethod
    def _live(plans: Iterable[_Plan], created_at: datetime) -> list[inbox.LiveGroup]:
        """Each event's payload for the live streams, built once (only the id differs)."""
        placeholder = uuid.uuid4()
        groups: list[inbox.LiveGroup] = []
        for p in plans:
            if not p.ids:
                continue
            ev = p.ev
            payload = NotificationOut(
                id=placeholder,
                kind=ev.kind,
                org_id=ev.org_id,
                event_id=ev.id,
                subject=ev.subject,
                data=ev.data,
                occurred_at=ev.occurred_at,
                created_at=created_at,
                read_at=None,
                archived_at=None,
            ).model_dump(mode="json")
            group = inbox.LiveGroup(ev.org_id, payload, str(placeholder))
            group.users, group.ids = p.in_app, p.ids
            groups.append(group)
        return groups


class FanoutBatcher:
    """Gathers the events of the worker's concurrent ``deliver_notification`` jobs and delivers
    them in batches of up to ``max_batch``: while one batch is delivered, the next gathers.
    A batch that fails as a whole (the database) is delivered again one event at a time, so
    one bad event fails only its own job."""

    def __init__(self, fanout: Fanout, max_batch: int = 200) -> None:
        self.fanout = fanout
        self.max_batch = max_batch
        self.pending: list[tuple[Event, asyncio.Future[int]]] = []
        self.task: asyncio.Task[None] | None = None

    async def deliver(self, ev: Event) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append((ev, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        # shielded: a job cancelled while it waits leaves its event to the batch (a retry
        # then finds it recorded and does nothing)
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        await asyncio.sleep(0)  # the jobs started by the same poll join this batch
        while self.pending:
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            try:
                await self._deliver(batch)
            except BaseException:
                # stopped (the worker shuts down): its jobs fail and run again
                for _, fut in batch:
                    _settle(fut, ServiceUnavailable("the fan-out stopped", code="fanout_stopped"))
                raise

    async def _deliver(self, batch: list[tuple[Event, asyncio.Future[int]]]) -> None:
        try:
            results = await self.fanout.deliver_many([ev for ev, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            log.warning("a batch of %d events failed; one at a time", len(batch), exc_info=True)
            for ev, fut in batch:
                try:
                    (one,) = await self.fanout.deliver_many([ev])
                except Exception as err:
                    one = err
                _settle(fut, one)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            _settle(fut, result)


def _settle(fut: asyncio.Future[int], result: int | BaseException | None) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result or 0)
