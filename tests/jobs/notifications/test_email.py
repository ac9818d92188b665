"""Preferences and mails: a notification mailed over a real SMTP server (aiosmtpd), HTML and
text, with a one-click unsubscribe (RFC 8058) that works without a session; the digest instead
of one mail per event, in the user's language; organization defaults; security notices cannot
be switched off."""

from __future__ import annotations

import uuid
from email.message import Message
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.notify import Event, JobOutcome, make_event
from services.jobs.email.service import send_digests, send_one
from services.jobs.notifications.models import NotificationMail
from services.jobs.settings import JobsSettings
from tests.jobs.notifications.conftest import Inbox, Stack
from tests.support.stacks.auth import Account, signup


def failed(acct: Account, job: str = "j1") -> Event:
    return make_event(
        "job.failed",
        JobOutcome(job_id=job, service="jobs", function="sleep", status="failed", error="boom"),
        org_id=acct.org_id,
        user_id=acct.user_id,
        source="jobs",
    )


async def mails_of(
    sessions: async_sessionmaker[AsyncSession], user: uuid.UUID
) -> list[NotificationMail]:
    async with sessions() as s:
        stmt = select(NotificationMail).where(NotificationMail.user_id == user)
        return list((await s.scalars(stmt.order_by(NotificationMail.created_at))).all())


def part(msg: Message, subtype: str) -> str:
    for p in msg.walk():
        if p.get_content_type() == f"text/{subtype}":
            payload = p.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError(f"no text/{subtype} part")


async def test_a_mail_arrives_and_its_link_unsubscribes_without_signing_in(
    stack: Stack, smtp: tuple[Inbox, JobsSettings], sessions: async_sessionmaker[AsyncSession]
) -> None:
    inbox, settings = smtp
    alice = await signup(stack.auth)
    await stack.fanout.deliver(failed(alice))
    (mail,) = await mails_of(sessions, alice.user_id)
    assert (mail.mode, mail.status, mail.email) == ("now", "pending", alice.email)
    assert await send_one(sessions, settings, mail.id) == "sent"
    assert await send_one(sessions, settings, mail.id) == "skipped"  # sent once only

    (msg,) = inbox.messages
    assert msg["To"] == alice.email and msg["Subject"] == "Job sleep failed"
    assert "Error: boom" in part(msg, "plain") and "<p>" in part(msg, "html")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = msg["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{settings.public_url}/v1/notifications/unsubscribe?token=")
    token = parse_qs(urlsplit(link).query)["token"][0]

    page = await stack.jobs.get("/v1/notifications/unsubscribe", params={"token": token})
    assert page.status_code == 200 and "<form" in page.text  # opening it changes nothing
    done = await stack.jobs.post(
        "/v1/notifications/unsubscribe",
        params={"token": token},
        content="List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200 and done.json() == {"unsubscribed": "job.failed"}
    prefs = (await stack.jobs.get("/v1/notifications/preferences", headers=alice.headers)).json()
    (job_failed,) = [k for k in prefs["kinds"] if k["kind"] == "job.failed"]
    assert job_failed["channels"] == ["in_app"] and job_failed["customized"]

    await stack.fanout.deliver(failed(alice, "j2"))
    assert len(await mails_of(sessions, alice.user_id)) == 1  # in-app only now
    listed = await stack.jobs.get("/v1/notifications", headers=alice.headers)
    assert len(listed.json()["data"]) == 2

    forged = token[:-2] + ("00" if not token.endswith("00") else "11")
    bad = await stack.jobs.post("/v1/notifications/unsubscribe", params={"token": forged})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_token"


async def test_a_digest_instead_of_one_mail_per_event_in_the_users_language(
    stack: Stack, smtp: tuple[Inbox, JobsSettings], sessions: async_sessionmaker[AsyncSession]
) -> None:
    inbox, settings = smtp
    alice = await signup(stack.auth)
    resp = await stack.jobs.put(
        "/v1/notifications/preferences",
        json={"kinds": {"job.failed": ["in_app", "digest"]}, "digest": "daily", "language": "zh"},
        headers=alice.headers,
    )
    assert resp.status_code == 200, resp.text
    assert (resp.json()["digest"], resp.json()["language"]) == ("daily", "zh")
    for job in ("a", "b"):
        await stack.fanout.deliver(failed(alice, job))
    assert {m.mode for m in await mails_of(sessions, alice.user_id)} == {"digest"}
    # not her frequency (counted on her: the round also sends what other tests left due)
    await send_digests(sessions, settings, "hourly")
    assert [m for m in inbox.messages if m["To"] == alice.email] == []
    assert await send_digests(sessions, settings, "daily") >= 1
    (msg,) = [m for m in inbox.messages if m["To"] == alice.email]
    assert "2 条通知" in str(msg["Subject"])
    text = part(msg, "plain")
    assert text.count("未成功") == 2 and "boom" in text
    assert msg["List-Unsubscribe"]
    assert {m.status for m in await mails_of(sessions, alice.user_id)} == {"sent"}


async def test_choices_are_checked_and_security_notices_stay_on(stack: Stack) -> None:
    alice = await signup(stack.auth)
    h = alice.headers
    for kinds, code in (
        ({"security.new_sign_in": ["none"]}, "mandatory_kind"),
        ({"job.failed": ["email", "digest"]}, "invalid_channels"),
        ({"job.failed": ["none", "email"]}, "invalid_channels"),
        ({"no.such": ["email"]}, "unknown_kind"),
    ):
        resp = await stack.jobs.put(
            "/v1/notifications/preferences", json={"kinds": kinds}, headers=h
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == code, resp.text
    prefs = (await stack.jobs.get("/v1/notifications/preferences", headers=h)).json()
    sign_in = next(k for k in prefs["kinds"] if k["kind"] == "security.new_sign_in")
    assert sign_in["mandatory"] and sign_in["channels"] == ["in_app", "email"]
    # back to the default
    await stack.jobs.put(
        "/v1/notifications/preferences", json={"kinds": {"job.failed": ["none"]}}, headers=h
    )
    resp = await stack.jobs.put(
        "/v1/notifications/preferences", json={"kinds": {"job.failed": None}}, headers=h
    )
    job_failed = next(k for k in resp.json()["kinds"] if k["kind"] == "job.failed")
    assert job_failed["channels"] == ["in_app", "email"] and not job_failed["customized"]


async def test_organization_defaults_apply_unless_a_member_chose(
    stack: Stack, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await signup(stack.auth)
    resp = await stack.jobs.put(
        "/v1/notifications/preferences/organization",
        json={"kinds": {"job.failed": ["none"]}},
        headers=alice.headers,
    )
    assert resp.status_code == 200 and resp.json() == {"kinds": {"job.failed": []}}
    assert await stack.fanout.deliver(failed(alice, "x")) == 0
    assert await mails_of(sessions, alice.user_id) == []
    await stack.jobs.put(
        "/v1/notifications/preferences",
        json={"kinds": {"job.failed": ["in_app"]}},
        headers=alice.headers,
    )
    assert await stack.fanout.deliver(failed(alice, "y")) == 1
