"""The fan-out: one event becomes, once per event id, its recipients' in-app notifications,
the mails they chose (now or in their digest), and webhook messages to the organization's
endpoints.

Recipients are asked of auth (internal HTTP) every time: members of the event's organization
with the kind's roles, or the one user it names while they still belong to it (an event about
an organization someone left reaches nobody there), never the actor themselves. Account notices
(``security.*``) go to their user wherever they act.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.dialects.postgresql import insert

from libs.db import SessionFactory, session_scope
from libs.errors import ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.notify import KINDS, Event
from libs.queue import enqueue
from services.jobs.email.service import SEND_MAIL
from services.jobs.notifications import inbox
from services.jobs.notifications.models import NotificationMail
from services.jobs.notifications.repository import NotificationRepository
from services.jobs.notifications.service import notification_out
from services.jobs.preferences.repository import PreferenceRepository
from services.jobs.preferences.service import effective
from services.jobs.webhooks.service import messages_for_event

log = logging.getLogger("aistack.jobs.notifications")


@dataclass
class Person:
    user_id: uuid.UUID
    email: str | None
    name: str


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


class Fanout:
    """Turns one event into notifications, mails and webhook messages, once per event id."""

    def __init__(self, sessions: SessionFactory, redis: Redis, recipients: Recipients) -> None:
        self.sessions = sessions
        self.redis = redis
        self.recipients = recipients

    async def people_for(self, ev: Event) -> tuple[list[Person], str]:
        spec = KINDS[ev.kind]
        if spec.account or ev.org_id is None:
            person = await self.recipients.contact(ev.user_id) if ev.user_id else None
            return ([person] if person else []), ""
        people: list[Person] = []
        org_name = ""
        if ev.user_id is not None:
            people, org_name = await self.recipients.members(ev.org_id, [], [ev.user_id])
        if not people and spec.roles:
            # no user named, or they are gone: the kind's roles
            people, org_name = await self.recipients.members(ev.org_id, list(spec.roles), [])
        return [p for p in people if p.user_id != ev.actor_id], org_name

    async def deliver(self, ev: Event) -> int:
        """Record the event and notify its recipients; how many got it in-app (0 for a
        duplicate). Raises when auth or the database fails (the job retries)."""
        spec = KINDS.get(ev.kind)
        if spec is None:
            log.warning("event %s of unknown kind %r dropped", ev.id, ev.kind)
            return 0
        people, org_name = await self.people_for(ev) if spec.inbox else ([], "")
        async with session_scope(self.sessions) as session:
            repo = NotificationRepository(session)
            if not await repo.record_event(ev):
                return 0
            chosen, org_default = await PreferenceRepository(session).for_kind(
                [p.user_id for p in people], ev.org_id, ev.kind
            )
            in_app: list[uuid.UUID] = []
            mails: list[dict[str, Any]] = []
            for p in people:
                channels = effective(ev.kind, chosen.get(p.user_id), org_default)
                if "in_app" in channels:
                    in_app.append(p.user_id)
                mode = "now" if "email" in channels else "digest" if "digest" in channels else None
                if mode and p.email:
                    mails.append(
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
            created = await repo.add_for(ev, in_app)
            if mails:
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
            await messages_for_event(session, self.redis, ev)
            live = [(n.user_id, n.org_id, "notification", notification_out(n)) for n in created]
        try:
            await inbox.publish(self.redis, live)
        except Exception as exc:  # stored; live clients see them in the list
            log.warning("%d notifications not pushed live: %s", len(live), exc)
        return len(created)
